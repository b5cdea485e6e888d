"""Process logging: records are formatted and written by a background thread.

Every call writes an audit line; formatting it and writing it (a system call,
perhaps a slow disk or pipe) must not stall the loop that serves the calls.
The loop only hands records to a queue; one listener thread formats them
(messages, timestamps, the audit JSON) and writes them out.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys

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
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    output = logging.StreamHandler(sys.stderr)
    output.setFormatter(logging.Formatter(FORMAT))
    listener = logging.handlers.QueueListener(records, output, respect_handler_level=True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(DeferredQueueHandler(records))
    root.setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    listener.start()
    atexit.register(listener.stop)
    return listener


__all__ = ["configure_logging"]
