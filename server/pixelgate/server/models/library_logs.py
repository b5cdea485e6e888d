"""diffusers' and transformers' records go through the process log like every other.

Each library installs a stderr handler of its own and stops its records from
propagating: they would bypass the process log's writer thread, its format and
its credential redaction, and its demotion of start-up noise.
"""

from __future__ import annotations

from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

_LIBRARIES = (diffusers_logging, transformers_logging)


def route_library_logs() -> None:
    """Removes the libraries' own handlers; their records propagate to the root logger."""
    for library in _LIBRARIES:
        library.disable_default_handler()
        library.enable_propagation()


def restore_library_logs() -> None:
    """Gives the libraries their own handlers back (tests that routed them undo it)."""
    for library in _LIBRARIES:
        library.disable_propagation()
        library.enable_default_handler()


__all__ = ["restore_library_logs", "route_library_logs"]
