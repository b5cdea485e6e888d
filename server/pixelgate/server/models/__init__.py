"""Model runtimes behind one protocol: loading diffusers pipelines, the registry of configured
models, the tiny test model, previews, safety checks.
"""
