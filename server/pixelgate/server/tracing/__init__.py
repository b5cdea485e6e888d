"""OpenTelemetry traces: the call's span from the caller's W3C trace context, its child spans
(authentication, queue wait, denoising, encoding, streaming) and the tracer provider.

`spans` and `job_spans` use only the OpenTelemetry API (the engine and the data plane open
their spans through them); `call_span` and `guard_span` are steps of the interceptor chain;
`provider` builds the server's own TracerProvider (never the global one) and its exporter.
"""
