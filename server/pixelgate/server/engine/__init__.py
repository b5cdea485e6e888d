"""The generation engine: jobs, the fair batching queue, workers, admission, ETA, step timing and
the memory guard. No gRPC, no security.
"""
