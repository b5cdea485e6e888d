"""One audit line per call: rendering, the writer thread, and the chain step that records each
call.
"""
