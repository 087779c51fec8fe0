"""The shortcut for plain members (most of a software tarball) never passes a member the full checks
would refuse: generated names, types, modes and sizes, each judged both ways."""

from __future__ import annotations

import tarfile

from hypothesis import given, settings
from hypothesis import strategies as st

from eessi_pipeline.cvmfs.tarmember import (
    MAX_DEPTH,
    NAME_MAX,
    PATH_MAX,
    _member_problems,
    _plain,
    basic_member_problems,
)

components = st.one_of(
    st.text(st.sampled_from("ab._-+~@%,=/ \t\x00\x7fé\udcff"), min_size=0, max_size=6),
    st.sampled_from([".", "..", "", ".cvmfscatalog", "x" * NAME_MAX, "y" * (NAME_MAX + 1)]),
)
names = st.one_of(
    st.lists(components, min_size=1, max_size=6).map("/".join),
    st.sampled_from(["/abs", "a/" * MAX_DEPTH + "b", "a/" * (MAX_DEPTH - 1) + "b", "p" * PATH_MAX]),
    st.integers(1, 40).map(lambda n: "/".join(["d" * 120] * n)),  # around PATH_MAX
)
TYPES = [tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
         tarfile.CHRTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE, b"V"]  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(names, st.sampled_from(TYPES), st.integers(0, 0o7777), st.booleans())
def test_plain_members_are_exactly_those_with_nothing_to_refuse(
    name: str, kind: bytes, mode: int, sparse: bool
) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, "target"
    if sparse:
        info.sparse = [(0, 1)]
    full = _member_problems(info, frozenset())
    if _plain(info):
        assert full == [], (name, kind, oct(mode), full)
    assert basic_member_problems(info) == full


def test_common_software_names_take_the_shortcut() -> None:
    for name in ["2023.06/software/linux/x86_64/generic/software/GCC/12.3.0/bin/gcc-12",
                 "2023.06/init/bash", "2023.06/software/linux/x86_64/generic/modules/all/x/1.0.lua"]:  # fmt: skip
        assert _plain(tarfile.TarInfo(name))
