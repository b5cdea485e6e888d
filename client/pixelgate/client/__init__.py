"""pixelgate client: generate images over mutual TLS with an OAuth 2.0 access token.

with PixelgateClient("127.0.0.1:50051", ca_file=..., cert_file=..., key_file=...,
                     token=Path("token")) as client:
    [image] = client.generate("a red fox in the snow", seed=7)
    Path("fox.png").write_bytes(image.data)

`token=` also takes a `ClientCredentials`, which gets tokens from an OAuth 2.0
authorization server itself (see its docstring).
"""

from pixelgate.client.client import OUTPUT_FORMATS, PixelgateClient, RetryPolicy
from pixelgate.client.credentials import TokenSource
from pixelgate.client.errors import (
    DeadlineExceeded,
    IncompleteImage,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PixelgateError,
    RateLimited,
    ServerError,
    TokenEndpointError,
    Unauthenticated,
    Unavailable,
)
from pixelgate.client.images import GeneratedImage
from pixelgate.client.oauth import AuthMethod, ClientCredentials

__all__ = [
    "OUTPUT_FORMATS",
    "AuthMethod",
    "ClientCredentials",
    "DeadlineExceeded",
    "GeneratedImage",
    "IncompleteImage",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "PixelgateClient",
    "PixelgateError",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "TokenEndpointError",
    "TokenSource",
    "Unauthenticated",
    "Unavailable",
]
