"""Process logging: records are formatted and written by a background thread.

Formatting a record and writing it (a system call, perhaps a slow disk or
pipe) must not stall the loop that serves the calls. The loop only hands
records to a queue; one listener thread formats them (messages, timestamps,
tracebacks) and writes them to stderr. Audit lines do not pass through here:
the audit writer (audit/writer.py) writes them on a thread of its own.

The writing handler carries the log filters (filters.py), so every record
that reaches it, from any logger, grpcio's included, is cleaned of credentials,
in the listener thread, before it is formatted.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys

from pixelgate.server.logs.filters import CredentialRedactor, ExpectedEventDemoter

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET_LIBRARIES = ("diffusers", "transformers", "httpx", "huggingface_hub")


class DeferredQueueHandler(logging.handlers.QueueHandler):
    """Enqueues records as they are: formatting waits for the listener thread.

    (The standard QueueHandler formats and copies each record in the caller's
    thread.) Safe in-process: the arguments handed to a log call are not
    changed afterwards.
    """

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def configure_logging(level: str | int = "INFO") -> logging.handlers.QueueListener:
    """Routes every record through a queue to stderr; returns the running listener."""
    root = logging.getLogger()
    root.setLevel(level)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    formatter = logging.Formatter(FORMAT)
    output = logging.StreamHandler(sys.stderr)
    output.setFormatter(formatter)
    # Demote first: a demoted record loses its traceback, which then needs no redacting.
    output.addFilter(ExpectedEventDemoter(threshold=root.level))
    output.addFilter(CredentialRedactor(formatter))
    listener = logging.handlers.QueueListener(records, output, respect_handler_level=True)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(DeferredQueueHandler(records))
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    listener.start()
    atexit.register(listener.stop)
    return listener


__all__ = ["configure_logging"]
