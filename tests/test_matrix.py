"""Tests of the architecture matrix loader (eessi_pipeline/matrix.py).

The shipped ``matrices/targets.yaml`` is checked for its exact content, and a table of
broken matrices (each derived from the real file, or raw YAML text) checks that every
problem is refused with a :class:`MatrixError` naming file, entry, key, value and fix.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from helpers import PROJECT_ROOT

from eessi_pipeline.errors import MatrixError, PipelineError
from eessi_pipeline.matrix import (
    MATRIX_ENV,
    IgnoredFeature,
    Matrix,
    load_matrix,
)

SHIPPED = PROJECT_ROOT / "matrices" / "targets.yaml"

SUBDIRS_2023_06 = frozenset(
    {
        "x86_64/generic",
        "x86_64/intel/haswell",
        "x86_64/intel/skylake_avx512",
        "x86_64/intel/cascadelake",
        "x86_64/intel/icelake",
        "x86_64/intel/sapphirerapids",
        "x86_64/amd/zen2",
        "x86_64/amd/zen3",
        "x86_64/amd/zen4",
        "aarch64/generic",
        "aarch64/neoverse_n1",
        "aarch64/neoverse_v1",
        "aarch64/a64fx",
        "aarch64/nvidia/grace",
    }
)
SUBDIRS_2025_06 = SUBDIRS_2023_06 | {"x86_64/amd/zen5"}


@pytest.fixture(scope="module")
def shipped() -> Matrix:
    return load_matrix(SHIPPED)


@pytest.fixture(scope="module")
def shipped_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    return data


# --------------------------------------------------------------------------------------------
# The shipped matrix
# --------------------------------------------------------------------------------------------


def test_load_matrix_shipped_file_loads_with_its_digest(shipped: Matrix) -> None:
    assert shipped.path == SHIPPED
    assert shipped.sha256 == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert shipped.default_version == "2023.06"
    assert [v.name for v in shipped.versions] == ["2023.06", "2025.06"]
    assert {f.name for f in shipped.families} == {"x86_64", "aarch64", "ppc64le", "riscv64"}


@pytest.mark.parametrize(
    ("version", "expected"),
    [("2023.06", SUBDIRS_2023_06), ("2025.06", SUBDIRS_2025_06)],
    ids=["2023.06", "2025.06"],
)
def test_targets_for_shipped_version_has_exactly_eessi_subdirs(
    shipped: Matrix, version: str, expected: frozenset[str]
) -> None:
    subdirs = [t.subdir for t in shipped.targets_for(version)]
    assert len(subdirs) == len(set(subdirs))
    assert set(subdirs) == expected


def test_targets_for_no_version_uses_default_version(shipped: Matrix) -> None:
    assert {t.subdir for t in shipped.targets_for(None)} == SUBDIRS_2023_06


def test_targets_shipped_short_names_include_eessi_names(shipped: Matrix) -> None:
    names = {t.name for t in shipped.targets}
    assert {"x86_64_generic", "haswell", "zen3", "aarch64_generic", "neoverse_n1", "grace"} <= names


def test_target_shipped_grace_uses_neoverse_v2_archspec(shipped: Matrix) -> None:
    grace = shipped.target("grace")
    assert (grace.subdir, grace.family, grace.archspec) == ("aarch64/nvidia/grace", "aarch64", "neoverse_v2")


@pytest.mark.parametrize(
    ("subdir", "generic"),
    [("x86_64/generic", True), ("aarch64/generic", True), ("x86_64/amd/zen3", False)],
    ids=["x86_64-generic", "aarch64-generic", "zen3"],
)
def test_target_is_generic_only_family_generic_subdir(shipped: Matrix, subdir: str, generic: bool) -> None:
    assert shipped.target(subdir).is_generic is generic


def test_family_shipped_ignore_features_loaded_sorted(shipped: Matrix) -> None:
    x86 = shipped.family("x86_64")
    assert x86 is not None
    assert x86.ignored == frozenset({"pku", "flush_l1d", "tsc_adjust", "waitpkg"})  # waitpkg: issue 19
    assert [f.name for f in x86.ignore_features] == sorted(x86.ignored)
    assert all(isinstance(f, IgnoredFeature) and len(f.reason) >= 10 for f in x86.ignore_features)
    assert x86.generic_subdir == "x86_64/generic"


def test_family_unknown_name_returns_none(shipped: Matrix) -> None:
    assert shipped.family("s390x") is None


@pytest.mark.parametrize(
    ("pick", "attribute"),
    [
        (lambda m: m, "default_version"),
        (lambda m: m.targets[0], "name"),
        (lambda m: m.families[0], "runner"),
        (lambda m: m.versions[0], "name"),
        (lambda m: m.families[0].ignore_features[0], "reason"),
    ],
    ids=["Matrix", "Target", "Family", "Version", "IgnoredFeature"],
)
def test_dataclasses_assignment_raises_frozen_instance_error(
    shipped: Matrix, pick: Callable[[Matrix], object], attribute: str
) -> None:
    obj = pick(shipped)
    before = getattr(obj, attribute)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, attribute, "changed")
    assert getattr(obj, attribute) == before


def test_matrix_collections_are_tuples_not_lists(shipped: Matrix) -> None:
    assert isinstance(shipped.targets, tuple)
    assert all(isinstance(t.versions, tuple) and isinstance(t.runner, tuple) for t in shipped.targets)
    assert all(isinstance(f.runner, tuple) for f in shipped.families)


@pytest.mark.parametrize("name", ["zen3", "x86_64_generic", "grace"], ids=["zen3", "x86_64_generic", "grace"])
def test_target_marker_is_arch_prefixed_name(shipped: Matrix, name: str) -> None:
    assert shipped.target(name).marker == f"arch_{name}"


@pytest.mark.parametrize(
    ("query", "name"),
    [("zen3", "zen3"), ("x86_64/amd/zen3", "zen3"), ("aarch64/nvidia/grace", "grace")],
    ids=["by-name", "by-subdir", "by-vendor-subdir"],
)
def test_target_name_or_subdir_finds_target(shipped: Matrix, query: str, name: str) -> None:
    assert shipped.target(query).name == name


@pytest.mark.parametrize(
    ("query", "suggestion"),
    [("zen33", "zen3"), ("x86_64/amd/zen", "x86_64/amd/zen"), ("neoverse-n1", "neoverse_n1")],
    ids=["name-typo", "subdir-prefix", "dash-for-underscore"],
)
def test_target_near_miss_raises_with_did_you_mean(shipped: Matrix, query: str, suggestion: str) -> None:
    with pytest.raises(MatrixError) as excinfo:
        shipped.target(query)
    msg = str(excinfo.value)
    assert repr(query) in msg
    assert "did you mean" in msg
    hint = msg.split("did you mean", 1)[1].split("?", 1)[0]
    assert suggestion in hint
    assert str(SHIPPED) in msg


def test_target_unrelated_name_raises_listing_known_targets(shipped: Matrix) -> None:
    with pytest.raises(MatrixError) as excinfo:
        shipped.target("qqqqqqqq")
    msg = str(excinfo.value)
    assert "did you mean" not in msg
    assert "known targets:" in msg
    assert "zen3" in msg
    assert "grace" in msg


def test_version_unknown_raises_listing_versions(shipped: Matrix) -> None:
    with pytest.raises(MatrixError, match=r"unknown stack version '2024\.06'.*2023\.06, 2025\.06"):
        shipped.version("2024.06")


def test_runner_for_target_with_runner_returns_own_runner(shipped: Matrix) -> None:
    assert shipped.runner_for(shipped.target("zen3")) == ("self-hosted", "Linux", "X64", "zen3")


def test_runner_for_target_without_runner_falls_back_to_family_runner(
    tmp_path: Path, shipped_data: dict[str, Any]
) -> None:
    data = copy.deepcopy(shipped_data)
    del _target(data, "zen3")["runner"]
    del _target(data, "neoverse_n1")["runner"]
    matrix = load_matrix(_write(tmp_path, data))
    zen3 = matrix.target("zen3")
    assert zen3.runner == ()
    assert matrix.runner_for(zen3) == ("ubuntu-24.04",)
    assert matrix.runner_for(matrix.target("neoverse_n1")) == ("ubuntu-24.04-arm",)
    assert matrix.runner_for(matrix.target("zen4")) == ("self-hosted", "Linux", "X64", "zen4")


def test_runner_for_family_unknown_returns_empty(shipped: Matrix) -> None:
    orphan = dataclasses.replace(shipped.target("zen3"), runner=())
    no_families = dataclasses.replace(shipped, families=())
    assert no_families.runner_for(orphan) == ()


def test_load_matrix_optional_keys_missing_get_schema_defaults(
    tmp_path: Path, shipped_data: dict[str, Any]
) -> None:
    data = copy.deepcopy(shipped_data)
    del data["families"]["x86_64"]["ignore_features"]
    del data["versions"]["2025.06"]["description"]
    matrix = load_matrix(_write(tmp_path, data))
    x86 = matrix.family("x86_64")
    assert x86 is not None
    assert x86.ignore_features == ()
    assert matrix.version("2025.06").description == ""
    assert matrix.target("zen3").description == ""


def test_load_matrix_no_path_uses_env_var(
    tmp_path: Path, shipped_data: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = copy.deepcopy(shipped_data)
    data["default_version"] = "2025.06"
    path = _write(tmp_path, data)
    monkeypatch.setenv(MATRIX_ENV, str(path))
    matrix = load_matrix()
    assert matrix.path == path
    assert matrix.default_version == "2025.06"


def test_load_matrix_no_path_no_env_loads_project_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MATRIX_ENV, raising=False)
    matrix = load_matrix()
    assert matrix.sha256 == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()


def test_matrix_error_is_pipeline_error_with_exit_code_1() -> None:
    assert issubclass(MatrixError, PipelineError)
    assert MatrixError.exit_code == 1


# --------------------------------------------------------------------------------------------
# Broken matrices
# --------------------------------------------------------------------------------------------


def _write(tmp_path: Path, data: dict[str, Any], name: str = "targets.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _target(data: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [t for t in data["targets"] if t["name"] == name]
    assert len(matches) == 1, f"the shipped matrix should have one target {name!r}"
    target: dict[str, Any] = matches[0]
    return target


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"expected {old!r} once in the shipped matrix"
    return text.replace(old, new)


def _set(name: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        _target(data, name)[key] = value

    return mutate


def _drop_key(name: str, key: str) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        del _target(data, name)[key]

    return mutate


def _rename_zen4_to_zen3(data: dict[str, Any]) -> None:
    _target(data, "zen4")["name"] = "zen3"


def _default_version_2024(data: dict[str, Any]) -> None:
    data["default_version"] = "2024.06"


def _aarch64_generic_only_2023(data: dict[str, Any]) -> None:
    _target(data, "aarch64_generic")["versions"] = ["2023.06"]


def _unknown_top_level_key(data: dict[str, Any]) -> None:
    data["targetz"] = []


def _missing_top_level_key(data: dict[str, Any]) -> None:
    del data["families"]


def _short_reason(data: dict[str, Any]) -> None:
    data["families"]["x86_64"]["ignore_features"]["pku"] = "hidden"


def _bad_version_key(data: dict[str, Any]) -> None:
    data["versions"]["2023.6"] = {}


def _unknown_family_key(data: dict[str, Any]) -> None:
    data["families"]["s390x"] = {"archspec": "s390x"}


def _family_archspec_wrong_root(data: dict[str, Any]) -> None:
    data["families"]["x86_64"]["archspec"] = "aarch64"


def _family_archspec_zen3(data: dict[str, Any]) -> None:
    data["families"]["x86_64"]["archspec"] = "zen3"


def _family_missing(data: dict[str, Any]) -> None:
    del data["families"]["aarch64"]


def _schema_version_2(data: dict[str, Any]) -> None:
    data["schema_version"] = 2


def _unquote_zen3_version(text: str) -> str:
    old = "  - name: zen3\n    subdir: x86_64/amd/zen3\n    family: x86_64\n    archspec: zen3\n"
    old += '    versions: ["2023.06", "2025.06"]\n'
    return _replace_once(text, old, old.replace('["2023.06", "2025.06"]', '[2023.06, "2025.06"]'))


class BadMatrix(NamedTuple):
    """A broken matrix: a change to the shipped data (or text), or raw text, and what the error says.

    ``expected`` fragments may use ``{path}`` (the written file) and ``{<target name>}`` (that
    target's index in the shipped file), so that the table does not depend on entry order.
    """

    id: str
    expected: tuple[str, ...]
    mutate: Callable[[dict[str, Any]], None] | None = None
    edit_text: Callable[[str], str] | None = None
    raw: str | None = None
    says_fix: bool = True


BAD_MATRICES = [
    BadMatrix(
        "subdir-bad-pattern",
        ("targets[{zen3}] (zen3).subdir", "'x86_64/AMD/zen3'", "does not match"),
        mutate=_set("zen3", "subdir", "x86_64/AMD/zen3"),
    ),
    BadMatrix(
        "subdir-wrong-family",
        ("targets[{zen3}] (zen3).subdir", "'aarch64/amd/zen3'", "not under family 'x86_64'", "'x86_64/'"),
        mutate=_set("zen3", "subdir", "aarch64/amd/zen3"),
    ),
    BadMatrix(
        "archspec-unknown-suggests-close-name",
        (
            "targets[{zen3}] (zen3).archspec",
            "'zen33'",
            "not an archspec microarchitecture",
            "did you mean zen3",
        ),
        mutate=_set("zen3", "archspec", "zen33"),
    ),
    BadMatrix(
        "archspec-wrong-family",
        ("targets[{zen3}] (zen3).archspec", "'neoverse_n1'", "belongs to family 'aarch64'", "not 'x86_64'"),
        mutate=_set("zen3", "archspec", "neoverse_n1"),
    ),
    BadMatrix(
        "generic-target-archspec-not-root",
        ("targets[{x86_64_generic}] (x86_64_generic).archspec", "'haswell'", "family root 'x86_64'"),
        mutate=_set("x86_64_generic", "archspec", "haswell"),
    ),
    BadMatrix(
        "duplicate-target-name",
        ("targets[{zen4}] (zen3).name", "'zen3'", "repeats targets[{zen3}]", "rename one"),
        mutate=_rename_zen4_to_zen3,
    ),
    BadMatrix(
        "duplicate-subdir",
        ("targets[{zen4}] (zen4).subdir", "'x86_64/amd/zen3'", "repeats targets[{zen3}]"),
        mutate=_set("zen4", "subdir", "x86_64/amd/zen3"),
    ),
    BadMatrix(
        "target-version-not-under-versions",
        ("targets[{zen3}] (zen3).versions", "'2024.06'", "not a key of `versions`"),
        mutate=_set("zen3", "versions", ["2023.06", "2024.06"]),
    ),
    BadMatrix(
        "default-version-not-a-key",
        ("default_version", "'2024.06'", "not a key of `versions`", "'2023.06'", "'2025.06'"),
        mutate=_default_version_2024,
    ),
    BadMatrix(
        "version-family-without-generic",
        ("versions.2025.06", "family 'aarch64'", "no 'aarch64/generic' target"),
        mutate=_aarch64_generic_only_2023,
    ),
    BadMatrix(
        "target-family-not-under-families",
        ("targets[{aarch64_generic}] (aarch64_generic).family", "'aarch64'", "not under `families`"),
        mutate=_family_missing,
    ),
    BadMatrix(
        "family-archspec-not-root",
        ("families.x86_64.archspec", "'aarch64'", "root for x86_64"),
        mutate=_family_archspec_wrong_root,
    ),
    BadMatrix(
        "family-archspec-non-root-same-family",
        ("families.x86_64.archspec", "'zen3'", "set it to 'x86_64'"),
        mutate=_family_archspec_zen3,
    ),
    BadMatrix(
        "unknown-top-level-key-lists-allowed",
        (
            "(top level)",
            "'targetz'",
            "use one of: default_version, families, schema_version, targets, versions",
        ),
        mutate=_unknown_top_level_key,
    ),
    BadMatrix(
        "missing-top-level-key",
        ("(top level)", "'families' is a required property", "add `families`"),
        mutate=_missing_top_level_key,
    ),
    BadMatrix(
        "missing-target-key",
        ("targets[{zen3}] (zen3)", "'subdir' is a required property", "add `subdir`"),
        mutate=_drop_key("zen3", "subdir"),
    ),
    BadMatrix(
        "unquoted-version-in-target-versions",
        ("targets[{zen3}] (zen3).versions[0]", "2023.06 is not of type 'string'", "quote"),
        edit_text=_unquote_zen3_version,
    ),
    BadMatrix(
        "unquoted-versions-key",
        ("versions: 2023.06 is not of type 'string'", "quote"),
        edit_text=lambda text: _replace_once(text, '  "2023.06":\n', "  2023.06:\n"),
    ),
    BadMatrix(
        "unquoted-default-version",
        ("default_version", "2023.06 is not of type 'string'", "quote it"),
        edit_text=lambda text: _replace_once(text, 'default_version: "2023.06"', "default_version: 2023.06"),
    ),
    BadMatrix(
        "version-key-not-yyyy-mm",
        ("versions", "'2023.6'", "YYYY.MM"),
        mutate=_bad_version_key,
    ),
    BadMatrix(
        "unknown-family-key",
        ("families", "'s390x'", "x86_64, aarch64, ppc64le, riscv64"),
        mutate=_unknown_family_key,
    ),
    BadMatrix(
        "ignore-features-reason-too-short",
        ("families.x86_64.ignore_features.pku", "'hidden'", "too short", "say why"),
        mutate=_short_reason,
    ),
    BadMatrix(
        "schema-version-unsupported",
        ("schema_version", "1 was expected", "schema_version: 1"),
        mutate=_schema_version_2,
    ),
    BadMatrix(
        "empty-file",
        ("(top level)", "None is not of type 'object'"),
        raw="",
    ),
    BadMatrix(
        "yaml-syntax-error-has-file-line-col",
        ("{path}:5:11: invalid YAML", "expected ',' or ']'"),
        raw="schema_version: 1\ntargets:\n  - name: zen3\n    subdir: [x86_64/amd/zen3\n    family: x86_64\n",
    ),
    BadMatrix(
        "yaml-duplicate-key-names-key-and-first-line",
        ("{path}:3:1: invalid YAML", "duplicate key 'default_version'", "first on line 2"),
        raw='schema_version: 1\ndefault_version: "2023.06"\ndefault_version: "2025.06"\n',
    ),
    BadMatrix(
        "yaml-duplicate-nested-key",
        ("{path}:4:5: invalid YAML", "duplicate key 'name'", "first on line 2"),
        raw="targets:\n  - name: zen3\n    subdir: x86_64/amd/zen3\n    name: zen4\n",
    ),
]


def _write_bad(tmp_path: Path, case: BadMatrix, shipped_data: dict[str, Any]) -> Path:
    path = tmp_path / "bad-targets.yaml"
    if case.raw is not None:
        path.write_text(case.raw, encoding="utf-8")
    elif case.edit_text is not None:
        path.write_text(case.edit_text(SHIPPED.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        assert case.mutate is not None
        data = copy.deepcopy(shipped_data)
        case.mutate(data)
        _write(tmp_path, data, path.name)
    return path


@pytest.mark.parametrize("case", BAD_MATRICES, ids=[c.id for c in BAD_MATRICES])
def test_load_matrix_bad_matrix_raises_error_naming_file_entry_value_fix(
    tmp_path: Path, shipped_data: dict[str, Any], case: BadMatrix
) -> None:
    path = _write_bad(tmp_path, case, shipped_data)
    with pytest.raises(MatrixError) as excinfo:
        load_matrix(path)
    msg = str(excinfo.value)
    assert str(path) in msg
    fields: dict[str, object] = {t["name"]: i for i, t in enumerate(shipped_data["targets"])}
    fields["path"] = path
    for fragment in case.expected:
        assert fragment.format(**fields) in msg
    if case.says_fix:
        assert "fix" in msg


def test_load_matrix_missing_file_raises_error_naming_file(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "targets.yaml"
    with pytest.raises(MatrixError) as excinfo:
        load_matrix(path)
    msg = str(excinfo.value)
    assert msg.startswith(f"{path}: file not found")
    assert "pass the right path" in msg


def test_load_matrix_version_family_without_generic_reports_only_that_version(
    tmp_path: Path, shipped_data: dict[str, Any]
) -> None:
    data = copy.deepcopy(shipped_data)
    _aarch64_generic_only_2023(data)
    with pytest.raises(MatrixError) as excinfo:
        load_matrix(_write(tmp_path, data))
    msg = str(excinfo.value)
    assert "versions.2025.06" in msg
    assert "versions.2023.06" not in msg
    assert "family 'x86_64'" not in msg


def test_load_matrix_several_consistency_problems_reports_each_on_own_line(
    tmp_path: Path, shipped_data: dict[str, Any]
) -> None:
    data = copy.deepcopy(shipped_data)
    _target(data, "zen3")["archspec"] = "zen33"
    _target(data, "zen4")["subdir"] = "x86_64/amd/zen3"
    data["default_version"] = "2024.06"
    path = _write(tmp_path, data)
    with pytest.raises(MatrixError) as excinfo:
        load_matrix(path)
    lines = str(excinfo.value).splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{path}: ") and "fix" in line for line in lines)
    assert sum("default_version" in line and "'2024.06'" in line for line in lines) == 1
    assert sum("(zen3).archspec" in line and "'zen33'" in line for line in lines) == 1
    assert sum("(zen4).subdir" in line and "repeats" in line for line in lines) == 1


def test_load_matrix_several_schema_problems_reports_each_on_own_line(
    tmp_path: Path, shipped_data: dict[str, Any]
) -> None:
    data = copy.deepcopy(shipped_data)
    _target(data, "zen3")["subdir"] = "x86_64/AMD/zen3"
    del _target(data, "grace")["family"]
    _short_reason(data)
    path = _write(tmp_path, data)
    with pytest.raises(MatrixError) as excinfo:
        load_matrix(path)
    lines = str(excinfo.value).splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{path}: ") and "; fix: " in line for line in lines)
    assert sum("(zen3).subdir" in line for line in lines) == 1
    assert sum("(grace)" in line and "add `family`" in line for line in lines) == 1
    assert sum("ignore_features.pku" in line for line in lines) == 1
