"""The gRPC call plumbing: the interceptor chain, the per-call record, request parsing after the
guards, error mapping, the stream writer.
"""
