"""Prometheus metrics: one OpenTelemetry MeterProvider per server, read by one Prometheus
reader into the server's own registry, served on a `/metrics` listener of its own.

The gRPC call metrics (gRFC A66 names), the service's instruments and the state read at
scrape time all go through the same provider, so one scrape shows them all.
"""
