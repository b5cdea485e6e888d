"""What every other package shares and that imports nothing of the server: settings, domain errors
and their status codes, the generation request, its image formats and events, principal data, rate
limit values.
"""
