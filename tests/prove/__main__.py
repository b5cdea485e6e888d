"""Entry point: `python tests/prove [--short] [--seed N] [--only a,b] [--keep]`."""

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a directory: import this folder as the package `prove`, not its files as
    # top-level modules (one of them could shadow a library's).
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.path.insert(0, str(here.parent))
    from prove.run import main
else:
    from .run import main

sys.exit(main())
