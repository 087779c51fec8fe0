"""Layer paths, the tarball and its .meta.txt (on a small staged tree)."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from eessi_pipeline.compat.layout import LayerSpec, default_prefix
from eessi_pipeline.compat.pack import Uploader, meta_json, pack_layer
from eessi_pipeline.errors import CompatError


def _spec(tmp_path: Path, **kw) -> LayerSpec:
    return LayerSpec.create("2023.06", "x86_64", tmp_path / "state", repository="software.eessi.local", **kw)


def test_layout_paths_map_to_the_repository(tmp_path: Path) -> None:
    s = _spec(tmp_path)
    assert s.prefix == default_prefix("software.eessi.local", "2023.06", "x86_64")
    assert s.prefix == "/cvmfs/software.eessi.local/versions/2023.06/compat/linux/x86_64"
    assert s.staging == tmp_path / "state/compat/versions/2023.06/compat/linux/x86_64"
    assert s.relpath == "2023.06/compat/linux/x86_64" and not s.in_place
    assert s.tarball_name(1700000000) == "eessi-2023.06-compat-linux-x86_64-1700000000.tar.gz"
    assert _spec(tmp_path, prefix=str(s.staging)).in_place


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"prefix": "relative/x"}, "not absolute"),
        ({"prefix": "/x"}, "too short"),
        ({"prefix": "/opt/" + "a" * 220}, "at most 200"),
        ({"prefix": "/opt/with space/x"}, "white space"),
    ],
    ids=["relative", "short", "long", "space"],
)
def test_layout_bad_prefix_is_refused(tmp_path: Path, kw, message: str) -> None:
    with pytest.raises(CompatError, match=message):
        _spec(tmp_path, **kw)


def test_layout_bad_version_family_repository(tmp_path: Path) -> None:
    with pytest.raises(CompatError, match=r"not YYYY\.MM"):
        LayerSpec.create("23.06", "x86_64", tmp_path, repository="r.io")
    with pytest.raises(CompatError, match="unknown; pass --family"):
        LayerSpec.create("2023.06", "sparc", tmp_path, repository="r.io")
    with pytest.raises(CompatError, match="not a CVMFS repository name"):
        LayerSpec.create("2023.06", "x86_64", tmp_path, repository="bad/name")


def _stage(spec: LayerSpec) -> None:
    root = spec.staging
    (root / "etc").mkdir(parents=True)
    (root / "startprefix").write_text("#!/bin/sh\n")
    (root / "startprefix").chmod(0o4755)
    (root / "etc/passwd").symlink_to("/etc/passwd")
    (root / "bin").mkdir()
    (root / "bin/bash").write_bytes(b"\x7fELF")
    os.link(root / "bin/bash", root / "bin/sh")


def test_pack_writes_an_ingestible_tarball_and_eessi_meta(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    _stage(spec)
    who = Uploader("builder", "10.0.0.1", "node1")
    packed = pack_layer(spec, epoch=1700000000, url_base="https://s3.example/eessi", uploader=who)
    assert packed.tarball == spec.tarball_dir / "eessi-2023.06-compat-linux-x86_64-1700000000.tar.gz"
    with tarfile.open(packed.tarball) as tar:
        names = tar.getnames()
        assert names[:3] == ["2023.06", "2023.06/compat", "2023.06/compat/linux"]
        sp = tar.getmember("2023.06/compat/linux/x86_64/startprefix")
        assert sp.mode == 0o755 and sp.uid == 0 and sp.uname == "root"  # setuid dropped
        assert tar.getmember("2023.06/compat/linux/x86_64/etc/passwd").linkname == "/etc/passwd"
        assert tar.getmember("2023.06/compat/linux/x86_64/bin/sh").islnk()
    meta = json.loads(packed.meta.read_text())
    assert meta == meta_json(
        packed.tarball.name,
        packed.size,
        meta["payload"]["ctime"],
        packed.sha256,
        f"https://s3.example/eessi/{packed.tarball.name}",
        who,
    )
    assert packed.meta.name == packed.tarball.name + ".meta.txt"


def test_pack_refuses_a_layer_that_ingest_would_refuse(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    _stage(spec)
    (spec.staging / "etc/shadow").symlink_to("/etc/shadow")
    with pytest.raises(
        CompatError, match=r"(?s)would be refused at ingest.*etc/shadow: absolute symlink target"
    ):
        pack_layer(spec, epoch=1)
    assert list(spec.tarball_dir.iterdir()) == []


def test_pack_without_a_layer_names_the_next_step(tmp_path: Path) -> None:
    with pytest.raises(CompatError, match="run `eessi-pipeline compat build` first"):
        pack_layer(_spec(tmp_path))
