"""pixelgate's proof suite (`make prove`): real servers, real Redis, hostile clients.

Not part of `make test`: no module here is named test_*.py, so pytest never collects it.
"""
