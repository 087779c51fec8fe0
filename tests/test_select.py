"""Target selection: unit cases with reasons, and hypothesis properties over random hosts."""

from __future__ import annotations

from pathlib import Path

import archspec.cpu
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eessi_pipeline.arch.cpuinfo import HostCpu, parse_cpuinfo
from eessi_pipeline.arch.select import (
    OVERRIDE_ENV,
    check_build_node,
    check_target,
    rank,
    require_build_node,
    select_from_environ,
    select_target,
    why_not,
)
from eessi_pipeline.errors import BuildNodeError, SelectionError
from eessi_pipeline.matrix import Matrix, load_matrix

MATRIX = load_matrix()
ARCHSPEC_DUMPS = Path(archspec.cpu.__file__).resolve().parent.parent / "json" / "tests" / "targets"


def _uarch_features(name: str) -> frozenset[str]:
    return frozenset(archspec.cpu.TARGETS[name].features)


def _host(family: str, vendor: str, features: set[str] | frozenset[str], model: str = "test") -> HostCpu:
    return HostCpu(family=family, vendor=vendor, features=frozenset(features), model_name=model)


def _dump(name: str) -> HostCpu:
    path = ARCHSPEC_DUMPS / name
    return parse_cpuinfo(path.read_text(), str(path))


# -- unit cases -------------------------------------------------------------------


def test_select_first_generation_zen_gets_generic_not_zen2() -> None:
    # EESSI's archdetect answers x86_64/amd/zen2 here (its zen2 rule asks only for avx2 and fma).
    # A Zen 1 lacks clwb, which -march=znver2 code may use: we must fall back to generic.
    host = _dump("linux-rhel7-zen")
    sel = select_target(host, MATRIX, "2023.06")
    assert sel.subdir == "x86_64/generic"
    assert sel.candidates == ("x86_64/generic",)
    assert "clwb" in why_not(host, MATRIX, "zen2", "2023.06")


def test_select_vm_hiding_pku_and_flush_l1d_still_gets_zen4() -> None:
    features = _uarch_features("zen4") - {"pku", "flush_l1d"}
    host = _host("x86_64", "AuthenticAMD", features)
    sel = select_target(host, MATRIX, "2023.06")
    assert sel.subdir == "x86_64/amd/zen4"
    verdict = check_target(host, MATRIX.target("zen4"), MATRIX)
    assert verdict.ignored_missing == ("flush_l1d", "pku")
    assert "ignores" in why_not(host, MATRIX, "zen4", "2023.06")


def test_select_missing_avx512_feature_drops_to_zen3() -> None:
    host = _host("x86_64", "AuthenticAMD", _uarch_features("zen4") - {"avx512ifma"})
    sel = select_target(host, MATRIX, "2023.06")
    assert sel.subdir == "x86_64/amd/zen3"
    assert "avx512ifma" in why_not(host, MATRIX, "zen4", "2023.06")


def test_select_intel_host_never_gets_amd_target() -> None:
    host = _host("x86_64", "GenuineIntel", _uarch_features("zen4") | _uarch_features("sapphirerapids"))
    sel = select_target(host, MATRIX, "2025.06")
    assert sel.subdir == "x86_64/intel/sapphirerapids"
    assert not any("/amd/" in c for c in sel.candidates)
    assert "AuthenticAMD" in why_not(host, MATRIX, "zen4", "2025.06")


def test_select_ampere_one_gets_neoverse_n1_through_archspec_lineage() -> None:
    host = _dump("linux-ubuntu22.04-ampere1")
    assert host.vendor == "Ampere"
    sel = select_target(host, MATRIX)
    assert sel.subdir == "aarch64/neoverse_n1"
    assert "aarch64/a64fx" not in sel.candidates


def test_select_zen5_only_in_versions_that_build_it() -> None:
    host = _host("x86_64", "AuthenticAMD", _uarch_features("zen5"))
    assert select_target(host, MATRIX, "2023.06").subdir == "x86_64/amd/zen4"
    assert select_target(host, MATRIX, "2025.06").subdir == "x86_64/amd/zen5"
    assert "not built in stack version 2023.06" in why_not(host, MATRIX, "zen5", "2023.06")


def test_select_family_without_targets_falls_back_to_its_generic() -> None:
    host = _host("ppc64le", "generic", set())
    sel = select_target(host, MATRIX)
    assert (sel.subdir, sel.target, sel.candidates) == ("ppc64le/generic", None, ("ppc64le/generic",))
    assert "builds no ppc64le target" in sel.notes[0]


def test_select_candidates_ordered_most_specific_first() -> None:
    host = _host("x86_64", "GenuineIntel", _uarch_features("sapphirerapids"))
    sel = select_target(host, MATRIX)
    assert sel.candidates == (
        "x86_64/intel/sapphirerapids",
        "x86_64/intel/icelake",
        "x86_64/intel/cascadelake",
        "x86_64/intel/skylake_avx512",
        "x86_64/intel/haswell",
        "x86_64/generic",
    )


@pytest.mark.parametrize(
    "value", ["x86_64/amd/zen2", "zen2", "/x86_64/amd/zen2/"], ids=["subdir", "name", "slashes"]
)
def test_override_valid_value_wins(value: str) -> None:
    host = _host("x86_64", "AuthenticAMD", _uarch_features("zen4"))
    sel = select_target(host, MATRIX, override=value)
    assert sel.subdir == "x86_64/amd/zen2"
    assert sel.candidates == ("x86_64/amd/zen2", "x86_64/generic")
    assert sel.override == value


def test_override_unknown_value_is_a_clear_error() -> None:
    host = _host("x86_64", "AuthenticAMD", set())
    with pytest.raises(SelectionError) as e:
        select_target(host, MATRIX, "2023.06", override="x86_64/amd/zen9")
    msg = str(e.value)
    assert OVERRIDE_ENV in msg
    assert "'x86_64/amd/zen9'" in msg
    assert "x86_64/amd/zen3" in msg
    assert "unset it" in msg


def test_override_target_of_other_version_is_refused() -> None:
    host = _host("x86_64", "AuthenticAMD", set())
    with pytest.raises(SelectionError, match=r"2023\.06"):
        select_target(host, MATRIX, "2023.06", override="zen5")


def test_override_host_cannot_run_it_warns_but_wins() -> None:
    host = _host("x86_64", "AuthenticAMD", _uarch_features("zen2"))
    sel = select_from_environ(host, MATRIX, None, {OVERRIDE_ENV: "aarch64/neoverse_v1"})
    assert sel.subdir == "aarch64/neoverse_v1"
    assert sel.candidates == ("aarch64/neoverse_v1", "aarch64/generic")
    assert any("cannot run" in n for n in sel.notes)


def test_override_empty_environment_value_is_ignored() -> None:
    host = _host("x86_64", "AuthenticAMD", _uarch_features("zen2"))
    assert select_from_environ(host, MATRIX, None, {OVERRIDE_ENV: ""}).subdir == "x86_64/amd/zen2"


def test_build_node_generic_builds_on_any_host_of_the_family() -> None:
    host = _host("x86_64", "HygonGenuine", {"sse2"})
    assert check_build_node(host, MATRIX.target("x86_64_generic"), MATRIX).ok
    assert not check_build_node(host, MATRIX.target("aarch64_generic"), MATRIX).ok


def test_build_node_mismatch_error_names_runner_and_alternatives() -> None:
    host = _host("x86_64", "AuthenticAMD", _uarch_features("zen3"), model="AMD EPYC 7763")
    require_build_node(host, MATRIX.target("zen3"), MATRIX)  # no error: zen3 host builds zen3
    with pytest.raises(BuildNodeError) as e:
        require_build_node(host, MATRIX.target("zen4"), MATRIX)
    msg = str(e.value)
    assert "zen4" in msg
    assert "avx512f" in msg
    assert "AMD EPYC 7763" in msg
    assert "self-hosted, Linux, X64, zen4" in msg
    assert "x86_64/amd/zen3, x86_64/amd/zen2, x86_64/generic" in msg


def test_rank_follows_archspec_ancestry_within_matrix() -> None:
    for a in MATRIX.targets:
        for b in MATRIX.targets:
            if a.archspec in {x.name for x in archspec.cpu.TARGETS[b.archspec].ancestors}:
                assert rank(a) < rank(b), (a.name, b.name)


# -- properties ------------------------------------------------------------------------


def _family_uarchs(family: str) -> list[str]:
    return sorted(u.name for u in archspec.cpu.TARGETS.values() if u.family.name == family)


def _family_features(family: str) -> list[str]:
    feats: set[str] = set()
    for name in _family_uarchs(family):
        feats |= archspec.cpu.TARGETS[name].features
    return sorted(feats)


VENDORS = {
    "x86_64": ["GenuineIntel", "AuthenticAMD", "HygonGenuine"],
    "aarch64": ["ARM", "Fujitsu", "Ampere", "Apple", "Nvidia", "Cavium"],
}


@st.composite
def hosts(draw: st.DrawFn) -> HostCpu:
    family = draw(st.sampled_from(sorted(VENDORS)))
    base = _uarch_features(draw(st.sampled_from(_family_uarchs(family))))
    pool = _family_features(family)
    added = draw(st.sets(st.sampled_from(pool), max_size=8))
    removed = draw(st.sets(st.sampled_from(pool), max_size=4))
    vendor = draw(st.sampled_from(VENDORS[family]))
    return _host(family, vendor, (base | added) - removed)


VERSIONS = st.sampled_from([v.name for v in MATRIX.versions])
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _ignored(m: Matrix, family: str) -> frozenset[str]:
    fam = m.family(family)
    return fam.ignored if fam else frozenset()


@PROPS
@given(host=hosts(), version=VERSIONS)
def test_property_selection_never_needs_a_feature_the_host_lacks(host: HostCpu, version: str) -> None:
    sel = select_target(host, MATRIX, version)
    for subdir in sel.candidates:
        t = MATRIX.target(subdir)
        needed = _uarch_features(t.archspec) - _ignored(MATRIX, t.family)
        assert needed <= host.features, (subdir, sorted(needed - host.features))
        assert t.family == host.family


@PROPS
@given(host=hosts(), version=VERSIONS, extra=st.data())
def test_property_adding_features_never_makes_selection_less_specific(
    host: HostCpu, version: str, extra: st.DataObject
) -> None:
    more = extra.draw(st.sets(st.sampled_from(_family_features(host.family)), min_size=1, max_size=10))
    richer = _host(host.family, host.vendor, host.features | more)
    before = select_target(host, MATRIX, version)
    after = select_target(richer, MATRIX, version)
    assert set(before.candidates) <= set(after.candidates)
    assert before.target is not None
    assert after.target is not None
    assert rank(after.target) >= rank(before.target)


@PROPS
@given(host=hosts(), version=VERSIONS, data=st.data())
def test_property_override_always_wins(host: HostCpu, version: str, data: st.DataObject) -> None:
    target = data.draw(st.sampled_from(MATRIX.targets_for(version)))
    value = data.draw(st.sampled_from([target.name, target.subdir]))
    sel = select_target(host, MATRIX, version, override=value)
    assert sel.subdir == target.subdir
    assert sel.candidates[0] == target.subdir


@PROPS
@given(host=hosts(), version=VERSIONS)
def test_property_generic_is_always_the_last_candidate(host: HostCpu, version: str) -> None:
    sel = select_target(host, MATRIX, version)
    assert sel.candidates[-1] == f"{host.family}/generic"
    assert len(set(sel.candidates)) == len(sel.candidates)
    assert sel.subdir == sel.candidates[0]
