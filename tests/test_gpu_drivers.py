"""``gpu link-drivers`` on the H200 host's recorded ``ldconfig -p`` lines (tests/data/gpu-host).

The driver files themselves cannot exist here, so each test builds a fake driver tree (empty files at
the recorded paths) under a tmp ``--sysroot``; everything else (parsing, choosing, linking, the
``latest`` switch) is the real code on the real listing.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from helpers import DATA_DIR

from eessi_pipeline.cli import main
from eessi_pipeline.gpu.drivers import (
    DriverLinkError,
    driver_versions_in,
    parse_ldconfig,
    plan_links,
)

LDCONFIG = DATA_DIR / "gpu-host" / "ldconfig-p.txt"
VERSION = "580.159.04"


def _fake_driver_tree(sysroot: Path, text: str) -> None:
    for e in parse_ldconfig(text):
        p = Path(str(sysroot) + e.path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()


def _link(tmp_path: Path, *extra: str, ldconfig: Path = LDCONFIG) -> tuple[int, dict[str, object]]:
    out = io.StringIO()
    rc = main(
        ["gpu", "link-drivers", "--ldconfig", str(ldconfig), "--family", "x86_64",
         "--sysroot", str(tmp_path / "host"), "--root", str(tmp_path / "hi"), "--json", *extra],
        out,
    )  # fmt: skip
    return rc, json.loads(out.getvalue()) if out.getvalue() else {}


def test_recorded_listing_parses_and_names_one_driver_version() -> None:
    entries = parse_ldconfig(LDCONFIG.read_text())
    assert len(entries) == 78
    assert driver_versions_in(entries) == (VERSION,)


def test_plan_takes_driver_libraries_only_first_path_wins() -> None:
    plan = plan_links(parse_ldconfig(LDCONFIG.read_text()), "x86_64", VERSION)
    names = {lk.name: lk.target for lk in plan.links}
    assert names["libcuda.so.1"] == "/usr/local/nvidia/lib64/libcuda.so.1"  # listed before /lib
    assert names["libnvidia-ml.so.1"] == "/usr/local/nvidia/lib64/libnvidia-ml.so.1"
    assert not any(n.startswith(("libcudart", "libnvrtc")) for n in names)  # the toolkit's, not the driver's


def test_links_into_versioned_dir_and_latest(tmp_path: Path) -> None:
    _fake_driver_tree(tmp_path / "host", LDCONFIG.read_text())
    rc, summary = _link(tmp_path)
    assert rc == 0
    base = tmp_path / "hi" / "nvidia" / "x86_64"
    assert os.readlink(base / "latest") == VERSION
    cuda = base / "latest" / "libcuda.so.1"
    assert (
        cuda.is_symlink()
        and cuda.resolve() == (tmp_path / "host/usr/local/nvidia/lib64/libcuda.so.1").resolve()
    )
    manifest = json.loads((base / VERSION / "driver.json").read_text())
    assert manifest["driver_version"] == VERSION and "libcuda.so.1" in manifest["links"]
    assert summary["driver_version_from"] == "the versioned library names ldconfig lists"


def test_a_new_driver_moves_latest_and_keeps_the_old_dir(tmp_path: Path) -> None:
    _fake_driver_tree(tmp_path / "host", LDCONFIG.read_text())
    assert _link(tmp_path)[0] == 0
    newer = LDCONFIG.read_text().replace(VERSION, "590.10.01")
    listing = tmp_path / "ldconfig-new.txt"
    listing.write_text(newer)
    _fake_driver_tree(tmp_path / "host", newer)
    rc, summary = _link(tmp_path, "--driver-version", "590.10.01", ldconfig=listing)
    base = tmp_path / "hi" / "nvidia" / "x86_64"
    assert rc == 0 and os.readlink(base / "latest") == "590.10.01"
    assert (base / VERSION / "libcuda.so.1").is_symlink()
    assert summary["driver_version_from"] == "--driver-version"


def test_libraries_of_another_driver_version_are_left_out(tmp_path: Path) -> None:
    stale = "\tlibnvidia-glcore.so.550.54.14 (libc6,x86-64) => /usr/lib64/libnvidia-glcore.so.550.54.14\n"
    plan = plan_links(parse_ldconfig(stale + LDCONFIG.read_text()), "x86_64", VERSION)
    assert any("of driver 550.54.14" in why for _, why in plan.skipped)
    assert "libnvidia-glcore.so.550.54.14" not in {lk.name for lk in plan.links}


def test_missing_files_refused_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _ = _link(tmp_path)
    err = capsys.readouterr().err
    assert rc == 1 and "libcuda.so.1: ldconfig lists it but the file is not there" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hello\n", "is not like"),
        ("\tlibz.so.1 (libc6,x86-64) => /lib/libz.so.1\n", "lists no libcuda.so.1"),
    ],
)
def test_bad_listings_are_refused(text: str, message: str) -> None:
    with pytest.raises(DriverLinkError, match=message):
        plan_links(parse_ldconfig(text), "x86_64", VERSION)


def test_bad_driver_version_refused() -> None:
    with pytest.raises(DriverLinkError, match=r"not like 580\.159\.04"):
        plan_links(parse_ldconfig(LDCONFIG.read_text()), "x86_64", "latest")


def test_empty_ldconfig_file_is_a_one_line_refusal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    rc, _ = _link(tmp_path, ldconfig=empty)
    err = capsys.readouterr().err
    assert rc == 1 and "is empty" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--family", "s390x"], "no NVIDIA driver libraries for family 's390x'"),
        (["--ldconfig", "/dev/zero"], "not a regular file"),
        (["--driver-version", "latest"], "is not like 580.159.04"),
    ],
)
def test_bad_arguments_are_one_line_refusals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    _fake_driver_tree(tmp_path / "host", LDCONFIG.read_text())
    base = ["gpu", "link-drivers", "--ldconfig", str(LDCONFIG), "--family", "x86_64",
            "--sysroot", str(tmp_path / "host"), "--root", str(tmp_path / "hi")]  # fmt: skip
    rc = main([*base, *argv], io.StringIO())
    err = capsys.readouterr().err
    assert rc == 1 and message in err and err.count("\n") == 1, err


def test_root_that_is_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_driver_tree(tmp_path / "host", LDCONFIG.read_text())
    (tmp_path / "hi").write_text("not a directory")
    rc, _ = _link(tmp_path)
    err = capsys.readouterr().err
    assert rc == 1 and "choose another --root" in err


def test_checks_without_a_build_say_what_to_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--state-dir", str(tmp_path), "gpu", "checks", "--target", "zen4_cc90"], io.StringIO())
    err = capsys.readouterr().err
    assert rc == 1 and "run `eessi-pipeline gpu build --target zen4_cc90` first" in err
