"""Development identity: a throwaway PKI and token issuer for local use and tests.

Nothing here is for production. `make certs` writes the files under
`certs/dev/` (git-ignored); the server's embedded default trusts exactly them.
`pixelgate-dev` (`cli.py`) is the command line; the client never imports this.
"""

from pathlib import Path

DEV_DIR = Path("certs/dev")
"""Where `make certs` writes the development PKI, relative to the project root."""

DEV_ISSUER = "https://issuer.pixelgate.invalid"
"""`iss` of development access tokens (the `.invalid` TLD never resolves)."""

DEV_AUDIENCE = "pixelgate"
"""`aud` the server expects in access tokens by default."""

DEV_CLIENT_ID = "spiffe://pixelgate.invalid/client/dev"
"""SPIFFE ID in the development client certificate's URI SAN."""

__all__ = ["DEV_AUDIENCE", "DEV_CLIENT_ID", "DEV_DIR", "DEV_ISSUER"]
