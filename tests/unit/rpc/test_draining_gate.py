"""The draining gate: open, it admits; closed, every call it guards is sent elsewhere."""

from __future__ import annotations

import pytest

from pixelgate.server.core.errors import DRAINING_MESSAGE, PUSHBACK_TRAILER, ReplicaBusy
from pixelgate.server.rpc.draining_gate import DrainingGate

METHOD = "/pixelgate.v1.ImageService/ListModels"


def test_a_closed_gate_refuses_with_pushback_so_a_fleet_client_retries_elsewhere() -> None:
    gate = DrainingGate()
    assert gate.admit(METHOD, None) is None  # type: ignore[arg-type]
    gate.close()
    with pytest.raises(ReplicaBusy) as refused:
        gate.admit(METHOD, None)  # type: ignore[arg-type]
    assert str(refused.value) == DRAINING_MESSAGE
    assert (PUSHBACK_TRAILER, "100") in refused.value.trailers
