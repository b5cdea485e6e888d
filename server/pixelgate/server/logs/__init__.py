"""Process logging: records go through a queue to a writer thread, with credentials redacted and
expected events demoted.
"""
