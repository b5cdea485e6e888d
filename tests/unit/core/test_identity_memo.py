"""The identity memo: same objects, same value; equal but distinct objects, none; bounded."""

from __future__ import annotations

from pixelgate.server.core.identity_memo import IdentityMemo


def test_a_value_is_found_again_for_the_very_same_objects_only():
    memo: IdentityMemo[str] = IdentityMemo(4)
    first, second = ["a"], ["a"]  # equal, but two objects
    memo.remember((first, None), "value")

    assert memo.get((first, None)) == "value"
    assert memo.get((second, None)) is None


def test_the_oldest_entry_goes_when_the_memo_is_full():
    memo: IdentityMemo[int] = IdentityMemo(2)
    objects = [object() for _ in range(3)]
    for number, thing in enumerate(objects):
        memo.remember((thing,), number)

    assert memo.get((objects[0],)) is None
    assert [memo.get((thing,)) for thing in objects[1:]] == [1, 2]
