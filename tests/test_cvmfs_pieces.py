"""Large files are cut and compressed from the pieces they were read in, never joined: the cuts are
the whole-file rule's and each object is the one the joined bytes make, however the bytes were split."""

from __future__ import annotations

import itertools
import tempfile
import zlib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from eessi_pipeline.cvmfs.objects import ObjectStore, Pieces, chunk_boundaries, first_cut_in

# bytes where the xor32 rule cuts often at small sizes (runs of 0x00/0xff and random bytes)
contents = st.binary(min_size=0, max_size=4000) | st.lists(
    st.sampled_from([b"\0" * 40, b"\xff" * 40, b"ab", bytes(range(256))]), max_size=60
).map(b"".join)


@st.composite
def split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=20))) if len(data) > 1 else []
    bounds = [0, *[c for c in cuts if c < len(data)], len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _cuts(pieces: Pieces, lo: int, avg: int, hi: int) -> list[int]:
    ends, begin = [], 0
    while True:
        cut = first_cut_in(pieces, begin, lo, avg, hi, True)
        assert cut is not None  # never when final
        begin += cut
        ends.append(begin)
        if begin >= len(pieces):
            return ends


@settings(max_examples=300, deadline=None)
@given(
    st.data(),
    contents,
    st.sampled_from([(64, 128, 300), (40, 64, 100), (33, 2000, 3000), (40, 2, 100), (33, 4, 64)]),
)
def test_cuts_across_pieces_are_the_whole_file_rule(
    data: st.DataObject, blob: bytes, sizes: tuple[int, int, int]
) -> None:
    pieces = Pieces(data.draw(split(blob)))
    assert len(pieces) == len(blob)
    assert _cuts(pieces, *sizes) == chunk_boundaries(blob, *sizes)


@settings(max_examples=200, deadline=None)
@given(st.data(), contents)
def test_views_and_dropping_keep_offsets(data: st.DataObject, blob: bytes) -> None:
    pieces = Pieces(data.draw(split(blob)))
    a = data.draw(st.integers(0, len(blob)))
    b = data.draw(st.integers(a, len(blob)))
    pieces.drop_before(a)  # what lies before a is forgotten, a..end still reads the same
    assert b"".join(pieces.views(a, b)) == blob[a:b]
    assert bytes(pieces.contiguous(a, b)) == blob[a:b]


@settings(max_examples=100, deadline=None)
@given(st.data(), contents)
def test_an_object_from_pieces_is_the_object_of_the_joined_bytes(data: st.DataObject, blob: bytes) -> None:
    """zlib's output does not depend on how its input was split: the same name, the same bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        store = ObjectStore(Path(tmp), 1)
        store.ensure_layout()
        h = store.put_pieces([memoryview(p) for p in data.draw(split(blob))], "P")
        assert h == store.put(blob, "P")
        assert store.path(h, "P").read_bytes() == zlib.compress(blob, 6)
