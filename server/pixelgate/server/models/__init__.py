"""Model runtimes behind one protocol: loading diffusers pipelines, device memory, the registry
of configured models, the tiny test model, previews, the output safety check.
"""
