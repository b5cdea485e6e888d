"""Domain status codes: core names them without gRPC; error mapping turns them into gRPC's."""

from __future__ import annotations

import grpc

from pixelgate.server.core import errors
from pixelgate.server.core.errors import ServiceError, StatusCode
from pixelgate.server.rpc.error_mapping import STATUSES


def test_every_domain_status_is_the_grpc_status_of_the_same_name_and_number() -> None:
    """A caller sees the code the error class names: same name, same wire number."""
    for code in StatusCode:
        assert STATUSES[code].name == code.name
        assert STATUSES[code].value[0] == code.value


def test_each_error_class_keeps_the_status_callers_have_always_seen() -> None:
    """The statuses of the domain errors are unchanged by taking gRPC out of core."""
    expected = {
        "ServiceError": grpc.StatusCode.INTERNAL,
        "InvalidArgument": grpc.StatusCode.INVALID_ARGUMENT,
        "RequestInvalid": grpc.StatusCode.INVALID_ARGUMENT,
        "NotFound": grpc.StatusCode.NOT_FOUND,
        "Unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
        "PermissionDenied": grpc.StatusCode.PERMISSION_DENIED,
        "ResourceExhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Unavailable": grpc.StatusCode.UNAVAILABLE,
        "DeadlineExceeded": grpc.StatusCode.DEADLINE_EXCEEDED,
    }
    for name, status in expected.items():
        error_class = getattr(errors, name)
        assert issubclass(error_class, ServiceError)
        assert STATUSES[error_class.code] is status
