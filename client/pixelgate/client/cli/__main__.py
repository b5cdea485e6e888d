"""`python -m pixelgate.client.cli`: the same as the `pixelgate` command."""

import sys

from pixelgate.client.cli import main

sys.exit(main())
