"""The gRPC-facing services: the ImageService servicer (protobuf to domain and back), request
validation, reflection, image encoding.
"""
