"""GPU detection (``detect --accel``) and the matrix's accelerator targets.

EESSI's nvidia-smi stand-ins (tests/data/archdetect/nvidia-smi/*.sh) and the recorded H200 are run as
real programs.  Two deliberate differences from EESSI's script, both tested here: a host without
nvidia-smi, and one whose nvidia-smi says "No devices were found", is a CPU-only host (empty answer,
exit 0; EESSI exits 2 and 3), while any other nvidia-smi failure is a one-line error.
"""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest
from helpers import DATA_DIR

from eessi_pipeline.arch.accel import (
    ACCEL_OVERRIDE_ENV,
    AccelError,
    Gpu,
    choose_accel,
    parse_nvidia_smi,
    query_nvidia_smi,
)
from eessi_pipeline.cli import main
from eessi_pipeline.cvmfs.tarcheck import parse_tarball_name
from eessi_pipeline.errors import MatrixError
from eessi_pipeline.matrix import load_matrix

SMI = DATA_DIR / "archdetect" / "nvidia-smi"
SAPPHIRE_VM = DATA_DIR / "archdetect" / "x86_64" / "intel" / "sapphirerapids-vm" / "h200-host-xeon-vm.cpuinfo"
WORKING = sorted(p for p in SMI.glob("*.sh") if p.with_suffix(".output").read_text().startswith("accel/"))


def _cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    out = io.StringIO()
    old = dict(os.environ)
    try:
        os.environ.pop(ACCEL_OVERRIDE_ENV, None)
        os.environ.update(env or {})
        rc = main(list(argv), out)
    finally:
        os.environ.clear()
        os.environ.update(old)
    return rc, out.getvalue()


def _script(tmp_path: Path, body: str, name: str = "nvidia-smi") -> Path:
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return p


def test_eessi_cases_are_all_here() -> None:
    assert {p.stem for p in WORKING} >= {"1xa100", "2xa100", "4xa100", "cc01", "1xh200"}


@pytest.mark.parametrize("case", WORKING, ids=lambda p: p.stem)
def test_detect_accel_answers_what_eessi_answers(case: Path) -> None:
    rc, out = _cli("detect", "--accel", "--nvidia-smi", str(case))
    assert rc == 0
    assert out.strip() == case.with_suffix(".output").read_text().strip()


def test_h200_line_is_cc90() -> None:
    gpus = parse_nvidia_smi("NVIDIA H200, 1, 580.159.04, 9.0\n")
    assert gpus == (Gpu("NVIDIA H200", 1, "580.159.04", "9.0"),)
    assert choose_accel(gpus, "x").subdir == "accel/nvidia/cc90"


def test_no_devices_is_a_cpu_only_host_unlike_eessi(capsys: pytest.CaptureFixture[str]) -> None:
    # EESSI's script exits 3 here (no_devices.output); a pipeline node without GPUs is normal for us.
    assert (SMI / "no_devices.output").read_text().startswith("non-zero exit code")
    rc, out = _cli("detect", "--accel", "--nvidia-smi", str(SMI / "no_devices.sh"))
    assert (rc, out) == (0, "")


def test_no_nvidia_smi_on_path_is_a_cpu_only_host(tmp_path: Path) -> None:
    rc, out = _cli("detect", "--accel", env={"PATH": str(tmp_path)})
    assert (rc, out) == (0, "")
    assert query_nvidia_smi(None, {"PATH": str(tmp_path)}).subdir == ""


def test_broken_nvidia_smi_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    smi = _script(
        tmp_path,
        'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."; exit 9',
    )
    rc, out = _cli("detect", "--accel", "--nvidia-smi", str(smi))
    err = capsys.readouterr().err
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and "exit 9" in err and "couldn't communicate" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "text",
    ["hello world", "NVIDIA H200, 1, 580.159.04, 9.0, extra", "NVIDIA H200, 1, 580.159.04, [N/A]"],
)
def test_output_that_is_not_the_inventory_is_refused(tmp_path: Path, text: str) -> None:
    smi = _script(tmp_path, f"echo '{text}'")
    with pytest.raises(AccelError, match="line 1"):
        query_nvidia_smi(str(smi), {"PATH": os.environ["PATH"]})


def test_missing_program_is_refused_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _ = _cli("detect", "--accel", "--nvidia-smi", str(tmp_path / "nope"))
    err = capsys.readouterr().err
    assert rc == 1 and "nope: no such file" in err


def test_mixed_gpus_take_the_first_and_say_so() -> None:
    gpus = parse_nvidia_smi("NVIDIA A100, 2, 545.23.08, 8.0\nNVIDIA H100, 2, 545.23.08, 9.0\n")
    acc = choose_accel(gpus, "smi")
    assert acc.subdir == "accel/nvidia/cc80"
    assert any("cc90" in n for n in acc.notes)


def test_override_answers_without_running_nvidia_smi(tmp_path: Path) -> None:
    rc, out = _cli(
        "detect", "--accel", "--nvidia-smi", str(tmp_path / "absent"),
        env={ACCEL_OVERRIDE_ENV: "accel/nvidia/cc80"},
    )  # fmt: skip
    assert (rc, out) == (0, "accel/nvidia/cc80\n")
    with pytest.raises(AccelError, match="like accel/nvidia/cc90"):
        query_nvidia_smi(None, {ACCEL_OVERRIDE_ENV: "cc80"})


def test_json_joins_the_cpu_target_and_the_gpu() -> None:
    rc, out = _cli(
        "detect", "--json", "--cpuinfo", str(SAPPHIRE_VM), "--nvidia-smi", str(SMI / "1xh200.sh")
    )  # fmt: skip
    data = json.loads(out)
    assert rc == 0
    assert data["subdir"] == "x86_64/intel/sapphirerapids"
    assert data["accel"]["subdir"] == "accel/nvidia/cc90"
    assert data["accel"]["gpus"][0]["driver_version"] == "580.159.04"
    assert data["accel"]["software_subdir"] == "x86_64/intel/sapphirerapids/accel/nvidia/cc90"


def test_json_notes_a_gpu_the_matrix_does_not_build_for(tmp_path: Path) -> None:
    rc, out = _cli(
        "detect", "--json", "--cpuinfo", str(SAPPHIRE_VM), "--nvidia-smi", str(SMI / "cc01.sh")
    )  # fmt: skip
    acc = json.loads(out)["accel"]
    assert rc == 0 and acc["software_subdir"] is None
    assert any("builds no accel/nvidia/cc01" in n for n in acc["notes"])


def test_json_without_accel_reports_a_broken_nvidia_smi_instead_of_failing(tmp_path: Path) -> None:
    smi = _script(tmp_path, "exit 9")
    rc, out = _cli("detect", "--json", "--cpuinfo", str(SAPPHIRE_VM), "--nvidia-smi", str(smi))
    assert rc == 0 and "exit 9" in json.loads(out)["accel"]["error"]


def test_sapphirerapids_vm_without_waitpkg_is_sapphirerapids() -> None:
    rc, out = _cli("detect", "--cpuinfo", str(SAPPHIRE_VM))
    assert (rc, out) == (0, "x86_64/intel/sapphirerapids\n")
    rc, out = _cli("detect", "--why-not", "sapphirerapids", "--cpuinfo", str(SAPPHIRE_VM))
    assert "waitpkg, which the matrix ignores" in out


# -- the matrix --------------------------------------------------------------------------------


def test_accel_targets_names_markers_subdirs_and_tarballs() -> None:
    m = load_matrix()
    at = m.accel_target("zen4_cc90")
    assert at.subdir == "x86_64/amd/zen4/accel/nvidia/cc90"
    assert at.marker == "arch_zen4_cc90"
    assert at.accel.compute_capability == "9.0" and at.accel.sm == "sm_90"
    name = at.tarball("2023.06", 1700000000)
    assert name == "eessi-2023.06-software-linux-x86_64-amd-zen4-accel-nvidia-cc90-1700000000.tar.gz"
    parsed = parse_tarball_name(name)
    assert parsed is not None
    assert "gpu-cc90" in m.accel_runner_for(at)
    names = {a.name for a in m.accel_targets("2023.06")}
    assert {"zen4_cc90", "sapphirerapids_cc90", "sapphirerapids_cc80", "icelake_cc80"} <= names
    assert m.accel_target(at.subdir) == at


def test_unknown_accel_target_is_refused() -> None:
    with pytest.raises(MatrixError, match=r"known: .*zen4_cc90"):
        load_matrix().accel_target("zen4_cc70")


def _matrix_with_generic_accel(tmp_path: Path) -> Path:
    text = (
        load_matrix()
        .path.read_text()
        .replace(
            "  - name: x86_64_generic\n    subdir: x86_64/generic\n",
            "  - name: x86_64_generic\n    subdir: x86_64/generic\n    accel: [{cc: cc90}]\n",
            1,
        )
    )
    p = tmp_path / "targets.yaml"
    p.write_text(text)
    return p


def test_schema_refuses_a_malformed_accel_entry(tmp_path: Path) -> None:
    text = (
        load_matrix()
        .path.read_text()
        .replace("{cc: cc90, description: NVIDIA H100/H200 on AMD", "{cc: '9.0', description: x", 1)
    )
    p = tmp_path / "targets.yaml"
    p.write_text(text)
    with pytest.raises(MatrixError, match="cc"):
        load_matrix(p)


def test_generic_target_with_accel_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MatrixError, match="generic target has no accelerator builds"):
        load_matrix(_matrix_with_generic_accel(tmp_path))


def test_accel_markers_are_registered(pytestconfig: pytest.Config) -> None:
    lines = pytestconfig.getini("markers")
    assert any(line.startswith("arch_zen4_cc90:") for line in lines)


def test_targets_json_lists_each_targets_accelerators() -> None:
    rc, out = _cli("targets", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rc == 0
    assert rows["zen4"]["accel"] == [
        {"name": "zen4_cc90", "subdir": "x86_64/amd/zen4/accel/nvidia/cc90", "marker": "arch_zen4_cc90"}
    ]
    assert rows["x86_64_generic"]["accel"] == []
