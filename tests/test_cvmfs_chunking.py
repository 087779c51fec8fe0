"""The vectorised xor32 chunker gives exactly the cuts of the reference byte loop."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eessi_pipeline.cvmfs import objects
from eessi_pipeline.cvmfs.common import CHUNK_AVG, CHUNK_MAX, CHUNK_MIN
from eessi_pipeline.cvmfs.objects import chunk_boundaries, chunk_boundaries_pure

pytest.importorskip("numpy")

# Small sizes make the pure loop cheap and give many chunks per input.
SMALL = (64, 256, 1024)


def _low_entropy(n: int, seed: int, alphabet: bytes = b"\x00\x01\xfe\xff") -> bytes:
    rng = random.Random(seed)
    return bytes(rng.choice(alphabet) for _ in range(n))


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=6000),
    minimum=st.integers(32, 300),
    average=st.integers(2, 2000),
    extra=st.integers(0, 3000),
)
def test_chunk_boundaries_random_data_matches_pure(
    data: bytes, minimum: int, average: int, extra: int
) -> None:
    maximum = minimum + extra
    assert chunk_boundaries(data, minimum, average, maximum) == chunk_boundaries_pure(
        data, minimum, average, maximum
    )


@pytest.mark.parametrize("seed", range(8))
def test_chunk_boundaries_urandom_small_params_matches_pure(seed: int) -> None:
    data = random.Random(seed).randbytes(50_000 + seed * 977)
    expected = chunk_boundaries_pure(data, *SMALL)
    assert len(expected) > 10  # the inputs do exercise many cuts
    assert chunk_boundaries(data, *SMALL) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 64,  # exactly minimum: one piece
        b"\x00" * 65,  # one byte over minimum
        b"\x00" * 5000,  # no candidate anywhere: forced cuts at maximum
        b"\xff" * 5000,  # all-ones: constant rolling value
        bytes(range(256)) * 40,
        _low_entropy(20_000, 1),  # frequent candidates, some right at the minimum
        _low_entropy(20_000, 2, b"\x7f\xff"),
        b"\x00" * 1024 + b"\x01" + b"\x00" * 1024,  # a forced cut just before a lone byte
    ],
    ids=["empty", "minimum", "minimum+1", "zeros", "ones", "ramp", "low-entropy", "7f-ff", "lone-byte"],
)
def test_chunk_boundaries_edge_cases_match_pure(data: bytes) -> None:
    assert chunk_boundaries(data, *SMALL) == chunk_boundaries_pure(data, *SMALL)


@pytest.mark.parametrize(
    ("minimum", "average", "maximum"), [(1, 8, 64), (31, 64, 128), (64, 1, 256), (128, 64, 100)]
)
def test_chunk_boundaries_parameters_outside_the_shortcut_match_pure(
    minimum: int, average: int, maximum: int
) -> None:
    data = random.Random(minimum).randbytes(4000)
    assert chunk_boundaries(data, minimum, average, maximum) == chunk_boundaries_pure(
        data, minimum, average, maximum
    )


@pytest.mark.parametrize("block", [37, 64, 1000])
def test_chunk_boundaries_block_seams_match_pure(monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    """Candidates found across the vectorised blocks' seams keep their 31 bytes of history."""
    monkeypatch.setattr(objects, "_XOR32_BLOCK", block)
    for seed in range(4):
        data = _low_entropy(8000, seed) if seed % 2 else random.Random(seed).randbytes(30_000)
        assert chunk_boundaries(data, *SMALL) == chunk_boundaries_pure(data, *SMALL), seed


@pytest.mark.slow
def test_chunk_boundaries_real_sizes_random_data_matches_pure() -> None:
    data = os.urandom(CHUNK_MAX + CHUNK_MIN)
    assert chunk_boundaries(data) == chunk_boundaries_pure(data, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)
