"""What every other package shares and that imports nothing of the server: settings, domain errors,
the generation request and its events, principal data.
"""
