"""Who may call: TLS, client certificate identity, token keys and their sources, token
verification, authentication and authorization steps.
"""
