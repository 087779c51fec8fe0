"""The smoke checks as data (matrices/smoke.yaml): schema, regexes, coverage of every easystack module,
and the ReFrame check files reading the same file through the same loader."""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest
import yaml

from eessi_pipeline.checks.references import ChecksError
from eessi_pipeline.checks.smoke import (
    SMOKE_FILE,
    ebroot_variable,
    load_smoke,
    parse_smoke,
    require_coverage,
    uncovered,
)
from eessi_pipeline.software.stacks import load_stacks

ROOT = Path(__file__).resolve().parent.parent
P = Path("smoke.yaml")
FALLBACK = {"description": "root exists", "command": 'test -d "${ebroot}" && echo ok', "expect": "^ok$"}


def _data(**modules: dict) -> dict:
    return {"schema_version": 1, "fallback": dict(FALLBACK), "modules": modules}


def _all_stack_modules() -> set[str]:
    stacks = load_stacks()
    return {m for f in stacks.stack_files for m in stacks.stack(f.version, f.name).modules}


def test_smoke_repository_file_loads_and_every_regex_compiles() -> None:
    table = load_smoke()
    assert table.path == SMOKE_FILE and table.checks
    for check in table.checks:
        re.compile(check.expect, re.M)
        assert check.description


def test_smoke_every_module_of_every_easystack_has_an_entry_or_explicit_fallback() -> None:
    table = load_smoke()
    modules = _all_stack_modules()
    assert "SciPy-bundle/2023.07" in modules
    assert uncovered(table, modules) == []
    require_coverage(table, modules, "every easystack of matrices/stacks.yaml")


def test_smoke_scipy_bundle_checks_the_bundles_own_numpy() -> None:
    check = load_smoke().check_for("SciPy-bundle")
    assert not check.fallback and "import os, numpy" in check.command
    assert "EBROOTSCIPYMINBUNDLE" in check.command
    assert re.search(check.expect, "numpy 1.25.1 bundle 6.0 8.0\n", re.M)
    assert not re.search(check.expect, "numpy 2.4.6 elsewhere:/usr/lib/numpy 6.0 8.0\n", re.M)


def test_smoke_module_without_entry_is_uncovered_and_refused_by_name() -> None:
    table = parse_smoke(_data(zlib={"description": "d", "command": "true", "expect": "x"}), P)
    assert uncovered(table, ["zlib/1.2.13", "GSL/2.7.1", "GSL/2.8"]) == ["GSL/2.7.1", "GSL/2.8"]
    with pytest.raises(
        ChecksError, match=r"smoke.yaml: no smoke check for GSL/2.7.1 \(the full stack\); fix:"
    ):
        require_coverage(table, ["GSL/2.7.1"], "the full stack")


def test_smoke_explicit_fallback_counts_as_covered_and_uses_the_module_root() -> None:
    table = parse_smoke(_data(**{"Foo-bar": {"fallback": True, "description": "just installed"}}), P)
    assert uncovered(table, ["Foo-bar/1.0"]) == []
    check = table.check_for("Foo-bar")
    assert check.fallback and check.command == 'test -d "$EBROOTFOOMINBAR" && echo ok'
    assert check.description == "just installed" and check.expect == "^ok$"


def test_smoke_missing_module_falls_back_without_being_covered() -> None:
    table = parse_smoke(_data(), P)
    assert table.check_for("zlib").command == 'test -d "$EBROOTZLIB" && echo ok'
    assert uncovered(table, ["zlib/1.2.13"]) == ["zlib/1.2.13"]


@pytest.mark.parametrize(
    ("modules", "message"),
    [
        (
            {"zlib": {"description": "d", "command": "true"}},
            r"smoke.yaml: modules.zlib: .* is not valid under any of the given schemas; "
            r"fix: either \{description, command, expect\} or \{fallback: true, description\}",
        ),
        (
            {"zlib": {"description": "d", "command": "true", "expect": "x", "fallback": True}},
            r"smoke.yaml: modules.zlib: .*; fix: either",
        ),
        (
            {"zlib": {"description": "d", "command": "true", "expect": "x", "timeout": 3}},
            r"smoke.yaml: modules.zlib: Additional properties are not allowed \('timeout' was unexpected\); "
            r"fix: remove it, or use one of: command, description, expect, fallback",
        ),
        (
            {"zlib": {"description": "d", "command": "true", "expect": "(unclosed"}},
            r"smoke.yaml: modules.zlib.expect: '\(unclosed' is not a valid regex .*; fix: correct it",
        ),
        (
            {"zlib/1.2.13": {"description": "d", "command": "true", "expect": "x"}},
            r"smoke.yaml: modules: 'zlib/1.2.13' does not match .*; fix: a module name without version",
        ),
    ],
    ids=["no-expect", "command-and-fallback", "unknown-key", "bad-regex", "versioned-name"],
)
def test_smoke_bad_file_is_refused_with_file_key_and_fix(modules: dict, message: str) -> None:
    with pytest.raises(ChecksError, match=message):
        parse_smoke(_data(**modules), P)


def test_smoke_fallback_without_ebroot_token_is_refused() -> None:
    data = _data()
    data["fallback"]["command"] = "true"
    with pytest.raises(ChecksError, match=r"fallback.command has no \{ebroot\}"):
        parse_smoke(data, P)


def test_smoke_bad_file_on_disk_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "smoke.yaml"
    bad.write_text("schema_version: 1\nmodules: {}\n", encoding="utf-8")
    with pytest.raises(ChecksError, match=rf"{re.escape(str(bad))}: \(top level\): 'fallback' is a required"):
        load_smoke(bad)


@pytest.mark.parametrize(
    ("name", "variable"),
    [
        ("zlib", "EBROOTZLIB"),
        ("SciPy-bundle", "EBROOTSCIPYMINBUNDLE"),
        ("GTK+", "EBROOTGTKPLUS"),
        ("Python.jl", "EBROOTPYTHONJL"),
    ],
    ids=["plain", "dash", "plus", "dot"],
)
def test_ebroot_variable_is_easybuilds_name(name: str, variable: str) -> None:
    assert ebroot_variable(name) == variable
    filetools = pytest.importorskip("easybuild.tools.filetools")
    assert "EBROOT" + filetools.convert_name(name, upper=True) == variable


CHECK_FILES = {
    "software": ROOT / "checks" / "software" / "software_checks.py",
    "gpu": ROOT / "checks" / "gpu" / "gpu_checks.py",
}


def _import_check_file(name: str, kind: str = "software") -> types.ModuleType:
    """A ReFrame check file under checks/, imported as ReFrame's loader would (needs reframe)."""
    pytest.importorskip("reframe")
    spec = importlib.util.spec_from_file_location(name, CHECK_FILES[kind])
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


@pytest.mark.parametrize("kind", sorted(CHECK_FILES))
def test_check_file_reads_the_smoke_file_like_the_loader(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EESSI_PIPELINE_SMOKE", raising=False)
    check_file = _import_check_file(f"{kind}_checks_default", kind)
    table = load_smoke()
    assert Path(check_file.SMOKE_FILE).resolve() == SMOKE_FILE.resolve()
    for name in [*(c.module for c in table.checks), "NotListed-1"]:
        assert check_file.SMOKE.check_for(name) == table.check_for(name), name
    assert check_file.SMOKE.check_for("NotListed-1").command == (
        table.fallback.command.replace("{ebroot}", ebroot_variable("NotListed-1"))
    )


@pytest.mark.parametrize("kind", sorted(CHECK_FILES))
def test_check_file_smoke_path_follows_the_environment(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "smoke.yaml"
    other.write_text(yaml.safe_dump(_data(zlib={"description": "d", "command": "echo hi", "expect": "hi"})))
    monkeypatch.setenv("EESSI_PIPELINE_SMOKE", str(other))
    check_file = _import_check_file(f"{kind}_checks_env", kind)
    assert Path(check_file.SMOKE_FILE) == other
    assert [c.module for c in check_file.SMOKE.checks] == ["zlib"]
    assert check_file.SMOKE.check_for("zlib").command == "echo hi"
