"""The CI workflow and the architecture matrix must agree.

``.github/workflows/pipeline.yml`` is static YAML: its ``arch`` job lists one
include entry per (target, stack version) pair of ``matrices/targets.yaml``.
These tests fail as soon as either file changes without the other.
"""

from __future__ import annotations

import re
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from eessi_pipeline.matrix import Matrix, load_matrix

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_PATH = REPO_ROOT / ".github" / "workflows" / "pipeline.yml"
MATRIX_PATH = REPO_ROOT / "matrices" / "targets.yaml"

ENTRY_KEYS = {"target", "subdir", "version", "runner"}
MATRIX_EXPR = re.compile(r"\$\{\{\s*matrix\.(\w+)\s*\}\}")
PYTEST_MARKER_EXPR = re.compile(r"pytest\s+-m\s+arch_\$\{\{\s*matrix\.target\s*\}\}")


def load_workflow(path: Path | None = None) -> dict[Any, Any]:
    path = path or WORKFLOW_PATH
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    assert isinstance(data, dict), f"{path}: top level is not a mapping"
    return data


def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    # YAML 1.1 (PyYAML) reads the bare key `on` as the boolean True.
    on = workflow.get("on", workflow.get(True))
    assert on is not None, "workflow has no `on:` triggers"
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    return dict(on)


def job(workflow: dict[Any, Any], name: str) -> dict[str, Any]:
    jobs = workflow.get("jobs") or {}
    assert name in jobs, f"workflow has no job {name!r}; jobs: {sorted(jobs)}"
    return dict(jobs[name])


def includes(workflow: dict[Any, Any]) -> list[dict[str, Any]]:
    arch = job(workflow, "arch")
    entries = arch.get("strategy", {}).get("matrix", {}).get("include")
    assert isinstance(entries, list), "jobs.arch.strategy.matrix.include is missing or not a list"
    assert entries, "jobs.arch.strategy.matrix.include is empty"
    return entries


def run_steps(job_def: dict[str, Any]) -> list[str]:
    return [str(s["run"]) for s in job_def.get("steps", []) if "run" in s]


def render(template: str, entry: dict[str, Any]) -> str:
    """Substitute ``${{ matrix.<key> }}`` as Actions would for one include entry."""

    def value(m: re.Match[str]) -> str:
        key = m.group(1)
        assert key in entry, f"{template!r} uses matrix.{key}, which include entry {entry} lacks"
        return str(entry[key])

    return MATRIX_EXPR.sub(value, template)


def pytest_step(arch: dict[str, Any]) -> str:
    runs = [r for r in run_steps(arch) if "pytest" in r]
    assert len(runs) == 1, f"jobs.arch should have exactly one pytest step, found {runs}"
    return runs[0]


def option(argv: list[str], flag: str) -> str | None:
    """The value after ``flag`` in ``argv``, or None."""
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


def shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it."""
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def expected_pairs(matrix: Matrix) -> set[tuple[str, str]]:
    return {(t.name, v) for t in matrix.targets for v in t.versions}


@pytest.fixture(scope="module")
def workflow() -> dict[Any, Any]:
    return load_workflow()


SETUP_COMMANDS = {"bash setup.sh --no-run", "sudo bash setup.sh --no-run"}


@pytest.fixture(scope="module")
def matrix() -> Matrix:
    return load_matrix(MATRIX_PATH)


def test_workflow_triggers_loaded_include_push_pull_request_and_dispatch(workflow: dict[Any, Any]) -> None:
    on = triggers(workflow)
    missing = {"push", "pull_request", "workflow_dispatch"} - set(on)
    assert not missing, f"workflow triggers {sorted(on)} lack {sorted(missing)}"


def test_arch_include_pairs_compared_to_matrix_are_equal(workflow: dict[Any, Any], matrix: Matrix) -> None:
    found = [(str(e.get("target")), e.get("version")) for e in includes(workflow)]
    want = expected_pairs(matrix)
    missing = sorted(want - set(found))
    extra = sorted(set(found) - want, key=repr)
    repeated = sorted(p for p, n in Counter(found).items() if n > 1)
    drift = [
        f"  {label} (target, version): {pairs}"
        for label, pairs in (("missing", missing), ("extra", extra), ("repeated", repeated))
        if pairs
    ]
    assert not drift, (
        f"{shown(WORKFLOW_PATH)} jobs.arch include list drifted from "
        f"{shown(MATRIX_PATH)}:\n" + "\n".join(drift) + "\n"
        "fix: one include entry per target per version in its `versions` list "
        '(quote the version, e.g. version: "2023.06")'
    )


def test_arch_include_entries_per_pair_have_matrix_subdir_and_runner(
    workflow: dict[Any, Any], matrix: Matrix
) -> None:
    by_name = {t.name: t for t in matrix.targets}
    problems: list[str] = []
    for i, entry in enumerate(includes(workflow)):
        where = f"include[{i}] ({entry.get('target')}, {entry.get('version')})"
        if set(entry) != ENTRY_KEYS:
            problems.append(f"{where}: keys {sorted(entry)}, want {sorted(ENTRY_KEYS)}")
        if not isinstance(entry.get("version"), str):
            problems.append(f"{where}: version {entry.get('version')!r} is not a quoted string")
        target = by_name.get(str(entry.get("target")))
        if target is None:
            problems.append(f"{where}: target is not a matrix short name; known: {sorted(by_name)}")
            continue
        if entry.get("subdir") != target.subdir:
            problems.append(f"{where}: subdir {entry.get('subdir')!r}, matrix says {target.subdir!r}")
        runner = entry.get("runner")
        want = list(matrix.runner_for(target))
        if not isinstance(runner, list) or [str(r) for r in runner] != want:
            problems.append(f"{where}: runner {runner!r}, matrix says {want!r}")
    assert not problems, "\n".join(problems)


def test_arch_job_per_entry_runs_on_matrix_runner_without_fail_fast(workflow: dict[Any, Any]) -> None:
    arch = job(workflow, "arch")
    assert arch.get("strategy", {}).get("fail-fast") is False, "jobs.arch.strategy.fail-fast must be false"
    runs_on = str(arch.get("runs-on", ""))
    match = MATRIX_EXPR.fullmatch(runs_on)
    assert match, f"jobs.arch.runs-on is {runs_on!r}, want '${{{{ matrix.runner }}}}'"
    assert match.group(1) == "runner", f"jobs.arch.runs-on is {runs_on!r}, want '${{{{ matrix.runner }}}}'"
    name_keys = set(MATRIX_EXPR.findall(str(arch.get("name", ""))))
    assert {"target", "version"} <= name_keys, f"jobs.arch.name {arch.get('name')!r} lacks target/version"


def test_arch_pytest_step_per_entry_selects_target_marker(workflow: dict[Any, Any], matrix: Matrix) -> None:
    arch = job(workflow, "arch")
    command = pytest_step(arch)
    assert PYTEST_MARKER_EXPR.search(command), (
        f"jobs.arch pytest step {command!r} must run `pytest -m arch_${{{{ matrix.target }}}}`"
    )
    by_name = {t.name: t for t in matrix.targets}
    produced: set[str] = set()
    problems: list[str] = []
    for entry in includes(workflow):
        argv = shlex.split(render(command, entry))
        marker = option(argv, "-m")
        version = option(argv, "--eessi-version")
        junit = [a for a in argv if a.startswith("--junitxml=")]
        produced.add(str(marker))
        target = by_name.get(str(entry.get("target")))
        if target is None or marker != target.marker:
            problems.append(f"entry {entry}: selects marker {marker!r}, which is no matrix target's marker")
        if version != entry.get("version"):
            problems.append(f"entry {entry}: passes --eessi-version {version!r}")
        if len(junit) != 1:
            problems.append(f"entry {entry}: pytest step writes no single --junitxml report")
    unselected = sorted({t.marker for t in matrix.targets} - produced)
    if unselected:
        problems.append(f"markers of matrix targets that no include entry selects: {unselected}")
    assert not problems, "\n".join(problems)


def test_arch_steps_in_order_check_out_set_up_test_and_always_upload(workflow: dict[Any, Any]) -> None:
    steps = job(workflow, "arch").get("steps", [])
    uses = [s.get("uses", "") for s in steps]
    runs = [str(s.get("run", "")) for s in steps]
    assert uses, "jobs.arch has no steps"
    assert uses[0] == "actions/checkout@v4", f"first jobs.arch step is {steps[:1]}"
    setup = next((i for i, r in enumerate(runs) if r.strip() in SETUP_COMMANDS), None)
    test = next((i for i, r in enumerate(runs) if "pytest" in r), None)
    upload = next(
        (i for i, u in enumerate(uses) if u == "actions/upload-artifact@v4" and "junit" in str(steps[i])),
        None,
    )
    assert setup is not None, f"jobs.arch has no `bash setup.sh --no-run` step: {runs}"
    assert test is not None, f"jobs.arch has no pytest step: {runs}"
    assert upload is not None, f"jobs.arch has no actions/upload-artifact@v4 step: {uses}"
    assert setup < test < upload, "jobs.arch must set up, then test, then upload"
    assert str(steps[upload].get("if", "")).strip() == "always()", "the JUnit upload must run if: always()"
    path = str(steps[upload].get("with", {}).get("path", ""))
    for entry in includes(workflow):
        argv = shlex.split(render(runs[test], entry))
        junit = [a.removeprefix("--junitxml=") for a in argv if a.startswith("--junitxml=")]
        uploaded = render(path, entry)
        assert junit == [uploaded], f"entry {entry}: uploads {uploaded!r}, pytest writes {junit}"


def test_publish_job_after_arch_runs_tox_publish_on_main_push(workflow: dict[Any, Any]) -> None:
    publish = job(workflow, "publish")
    needs = publish.get("needs")
    needs = [needs] if isinstance(needs, str) else list(needs or [])
    assert "arch" in needs, f"jobs.publish.needs is {needs}, want arch"
    assert publish.get("runs-on") == "ubuntu-24.04"
    condition = re.sub(r"\s+", " ", str(publish.get("if", "")))
    for clause in ("github.event_name == 'push'", "github.ref == 'refs/heads/main'"):
        assert clause in condition, (
            f"jobs.publish.if is {condition!r}; it must publish only on pushes to main"
        )
    runs = [r.strip() for r in run_steps(publish)]
    assert SETUP_COMMANDS & set(runs), f"jobs.publish runs {runs}"
    assert runs[-1] == ".venv/bin/tox -e publish", f"jobs.publish runs {runs}"


def test_arch_jobs_hand_their_gated_tarballs_to_the_publish_job(workflow: dict[Any, Any]) -> None:
    arch, publish = job(workflow, "arch"), job(workflow, "publish")
    test = pytest_step(arch)
    assert "--eessi-gate" in shlex.split(test), f"jobs.arch pytest step {test!r} writes no gate record"
    uploads = [s for s in arch.get("steps", []) if s.get("uses") == "actions/upload-artifact@v4"]
    gated = [s for s in uploads if "tarballs" in str(s.get("with", {}).get("path", ""))]
    assert gated and str(gated[0].get("if", "")).strip() == "success()", (
        "only a green job uploads its tarball"
    )
    state = str(arch.get("env", {}).get("EESSI_PIPELINE_STATE_DIR", ""))
    assert str(gated[0]["with"]["path"]).startswith(".state/ci/") and state.endswith("/.state/ci")
    steps = publish.get("steps", [])
    download = next(i for i, s in enumerate(steps) if s.get("uses") == "actions/download-artifact@v4")
    stage = next(i for i, s in enumerate(steps) if "gate stage" in str(s.get("run", "")))
    assert download < stage < len(steps) - 1, "publish must download, stage, then publish"
    assert steps[download]["with"]["pattern"] == "gated-*"


def test_arch_include_families_cover_x86_64_and_aarch64(workflow: dict[Any, Any], matrix: Matrix) -> None:
    in_matrix = {t.family for t in matrix.targets}
    in_workflow = {str(e.get("subdir", "")).split("/")[0] for e in includes(workflow)}
    for family in ("x86_64", "aarch64"):
        assert family in in_matrix, f"{MATRIX_PATH.name} has no {family} target"
        assert family in in_workflow, f"jobs.arch include list has no {family} entry"


# -- GPU jobs (issue 19) -------------------------------------------------------------------------


def test_gpu_job_includes_every_accel_target_with_its_runner(
    workflow: dict[Any, Any], matrix: Matrix
) -> None:
    gpu = job(workflow, "gpu")
    entries = gpu.get("strategy", {}).get("matrix", {}).get("include") or []
    found = {(e["target"], e["version"]): (e["subdir"], list(e["runner"])) for e in entries}
    want = {
        (at.name, v): (at.subdir, list(matrix.accel_runner_for(at)))
        for at in matrix.every_accel_target()
        for v in at.versions
    }
    assert found == want, "jobs.gpu include list drifted from the `accel` entries of matrices/targets.yaml"
    assert all(any(label.startswith("gpu-") for label in r) for _, r in found.values())
    assert gpu.get("runs-on") == "${{ matrix.runner }}"


def test_gpu_job_runs_the_gpu_checks_of_its_marker(workflow: dict[Any, Any]) -> None:
    gpu = job(workflow, "gpu")
    runs = [r for r in run_steps(gpu) if "pytest" in r]
    assert len(runs) == 1
    words = shlex.split(render(runs[0], {"target": "zen4_cc90", "version": "2023.06", "subdir": "x"}))
    assert words[words.index("-m") + 1] == "arch_zen4_cc90"
    assert "tests/test_gpu_checks_acceptance.py" in words
    assert any("gpu link-drivers" in r for r in run_steps(gpu))


def test_compat_job_gates_the_layer_of_every_family_and_version_for_publish(
    workflow: dict[Any, Any], matrix: Matrix
) -> None:
    """Software of every target runs on its family's compatibility layer: CI gates each layer and the
    publish job waits for it (publish holds back software whose loader is not in the repository)."""
    compat = job(workflow, "compat")
    pairs = {(e["family"], e["version"]) for e in compat["strategy"]["matrix"]["include"]}
    wanted = {(t.family, v) for t in matrix.targets for v in t.versions}
    assert pairs == wanted, f"jobs.compat covers {sorted(pairs)}, the matrix needs {sorted(wanted)}"
    (gate,) = [r for r in run_steps(compat) if "tests/test_compat_layer.py" in r]
    for option in (
        "--eessi-gate-tarball",
        "--eessi-gate-reframe-report",
        "--eessi-compat-state",
        "--eessi-version",
    ):
        assert option in gate, f"jobs.compat test step lacks {option}"
    uploads = [s for s in compat["steps"] if s.get("uses") == "actions/upload-artifact@v4"]
    gated = [s for s in uploads if str(s["with"]["name"]).startswith("gated-compat-")]
    assert gated and str(gated[0].get("if", "")).strip() == "success()"
    assert str(gated[0]["with"]["path"]) == ".state/ci/compat/tarballs/"
    needs = job(workflow, "publish").get("needs")
    assert "compat" in ([needs] if isinstance(needs, str) else list(needs or []))


def test_compat_job_gates_only_its_own_family_with_that_familys_reframe_report(
    workflow: dict[Any, Any],
) -> None:
    """An x86_64 runner with qemu-user registered (setup.sh does it) would also test the aarch64 layer: the
    gated run keeps the job's family only, and hands the gate that family's ReFrame report (the compat
    tests write it to ``reframe-compat/<family>/report.json`` of the run dir)."""
    compat = job(workflow, "compat")
    (gate,) = [r for r in run_steps(compat) if "tests/test_compat_layer.py" in r]
    for entry in compat["strategy"]["matrix"]["include"]:
        words = shlex.split(render(gate, entry).replace("\\\n", " "))
        family = entry["family"]
        assert words[words.index("--eessi-compat-family") + 1] == family, words
        report = words[words.index("--eessi-gate-reframe-report") + 1]
        assert report.endswith(f"/reframe-compat/{family}/report.json"), report


def test_gpu_job_packs_the_tarball_and_records_the_gate(workflow: dict[Any, Any]) -> None:
    runs = [" ".join(r.split()) for r in run_steps(job(workflow, "gpu"))]
    build = next(i for i, r in enumerate(runs) if "gpu build" in r)
    test = next(i for i, r in enumerate(runs) if "pytest" in r)
    record = next(i for i, r in enumerate(runs) if "gate record" in r)
    assert build < test < record
    assert "--tarball" in runs[build]
    assert "--eessi-run-dir=gpu-run" in runs[test]
    assert "--reframe-report gpu-run/gpu-${{ matrix.target }}/report.json" in runs[record]
