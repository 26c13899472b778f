"""A generation's strings on disk (service/blobs.py): read back whole, and found by bytes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from service.blobs import PREFIX_BYTES, Blobs, BlobWriter, find, sorted_order


def written(directory: Path, strings: list[bytes]) -> Blobs:
    with BlobWriter(directory, "ids") as writer:
        for string in strings:
            writer.add(string)
    return Blobs(directory, "ids")


def awkward_strings(rng: random.Random) -> list[bytes]:
    """Zero bytes, high bytes, empty strings, and long runs that share more than PREFIX_BYTES."""
    shared = bytes(rng.randrange(256) for _ in range(PREFIX_BYTES + rng.choice([-1, 0, 1, 8])))
    return [
        shared * rng.randint(0, 1)
        + bytes(rng.choice([0, 1, 97, 255]) for _ in range(rng.randint(0, PREFIX_BYTES + 8)))
        for _ in range(rng.randint(1, 300))
    ]


@pytest.mark.parametrize("seed", range(40))
def test_the_order_is_bytewise_and_every_string_is_found(tmp_path: Path, seed: int) -> None:
    strings = awkward_strings(random.Random(seed))
    blobs = written(tmp_path, strings)
    order = sorted_order(blobs)
    assert [blobs[i] for i in order.tolist()] == sorted(strings)
    assert list(blobs) == strings
    for string in strings:
        found = find(blobs, order, string)
        assert found is not None and strings[found] == string
    assert find(blobs, order, b"\xff" * (PREFIX_BYTES + 9)) is None


def test_a_shorter_string_sorts_before_its_zero_padded_twin(tmp_path: Path) -> None:
    strings = [b"ab\x00", b"ab", b"", b"\x00", b"ab\x00\x00", b"a"]
    order = sorted_order(written(tmp_path, strings))
    assert [strings[i] for i in order.tolist()] == [
        b"",
        b"\x00",
        b"a",
        b"ab",
        b"ab\x00",
        b"ab\x00\x00",
    ]


def test_no_strings(tmp_path: Path) -> None:
    blobs = written(tmp_path, [])
    assert len(blobs) == 0 and len(sorted_order(blobs)) == 0
    assert find(blobs, sorted_order(blobs), b"x") is None
