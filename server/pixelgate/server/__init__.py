"""pixelgate server: a secure gRPC image-generation service.

`pixelgate.server.app` is the composition root; each other module holds one
concern (TLS, authentication, authorization, rate limiting, validation,
errors, the engine, the servicer, configuration).
"""
