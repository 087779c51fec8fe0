"""Pure parts of the software checks: references, ReFrame configuration, report parsing, band judgement."""

from __future__ import annotations

from pathlib import Path

import pytest

from eessi_pipeline.checks.references import (
    ChecksError,
    Reference,
    load_references,
    parse_references,
    update_from_report,
)
from eessi_pipeline.checks.report import parse_report
from eessi_pipeline.checks.rfmconfig import TargetPrefix, config, parse_site
from eessi_pipeline.checks.runner import RunPaths, reframe_argv, reframe_env
from eessi_pipeline.gate.record import summarise_reframe
from eessi_pipeline.matrix import load_matrix

P = Path("references.yaml")


def _refs(value=10.0, lower=-0.5, upper=None, unit="GB/s", target="zen4", check="stream_check/1_core"):
    return {
        "schema_version": 1,
        "checks": {
            check: {target: {"Triad": {"value": value, "lower": lower, "upper": upper, "unit": unit}}}
        },
    }


def _report(value, ref=10.0, lower=-0.5, upper=None, result="pass", phase=None, cases=None):
    tc = {
        "name": "stream_check %scale=1_core",
        "display_name": "stream_check %scale=1_core",
        "reference_key": "stream_check/1_core",
        "system": "eessi_local",
        "partition": "zen4",
        "result": result,
        "fail_phase": phase,
        "fail_reason": None,
        "time_total": 1.0,
        "perfvalues": {
            "eessi_local:zen4:Triad": [
                value,
                ref,
                lower,
                upper,
                "GB/s",
                "pass" if result == "pass" else "fail",
            ]
        },
    }
    tcs = [tc] if cases is None else cases
    return {"session_info": {"num_cases": len(tcs)}, "runs": [{"testcases": tcs}]}


def test_references_repository_file_loads_for_matrix_targets() -> None:
    refs = load_references(targets=load_matrix().target_names())
    assert refs.for_check("stream_check/1_core", "zen4")["Triad"].unit == "GB/s"
    assert refs.for_check("gpu_bandwidth_check/1_gpu", "zen4_cc90")["Triad"].unit == "GB/s"  # issue 19


def test_references_valid_entry_parses_with_default_upper() -> None:
    data = _refs()
    del data["checks"]["stream_check/1_core"]["zen4"]["Triad"]["upper"]
    refs = parse_references(data, P, ["zen4"])
    assert refs.for_check("stream_check/1_core", "zen4") == {"Triad": Reference(10.0, -0.5, None, "GB/s")}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_refs(value=0), "Triad.value"),
        (_refs(lower=0.5), "lower"),
        (_refs(unit=""), "unit"),
        (_refs(check="Stream check"), "check key"),
        ({"schema_version": 1}, "checks"),
    ],
    ids=["zero-value", "positive-lower", "empty-unit", "bad-check-key", "no-checks"],
)
def test_references_invalid_data_raises_naming_file_and_fix(data, expected) -> None:
    with pytest.raises(ChecksError) as e:
        parse_references(data, P, ["zen4"])
    assert (
        str(e.value).startswith("references.yaml: ") and "fix:" in str(e.value) and expected in str(e.value)
    )


def test_references_unknown_target_raises_with_known_targets() -> None:
    with pytest.raises(ChecksError, match=r"unknown target 'zen9'; fix: use one of zen4"):
        parse_references(_refs(target="zen9"), P, ["zen4"])


def test_reference_bounds_are_fractions_of_value() -> None:
    assert Reference(100.0, -0.1, 0.2, "s").bounds() == (90.0, 120.0)
    assert Reference(100.0, None, None, "s").bounds() == (None, None)


def test_update_from_report_keeps_bounds_and_adds_new_entries() -> None:
    new, changes = update_from_report(_refs(lower=-0.2), _report(42.0), "zen4")
    assert new["checks"]["stream_check/1_core"]["zen4"]["Triad"] == {
        "value": 42.0,
        "lower": -0.2,
        "upper": None,
        "unit": "GB/s",
    }
    assert changes == ["stream_check/1_core zen4 Triad: 10.0 GB/s -> 42.0 GB/s"]
    new, _ = update_from_report({"schema_version": 1, "checks": {}}, _report(42.0), "zen3")
    assert new["checks"]["stream_check/1_core"]["zen3"]["Triad"]["lower"] == -0.5
    parse_references(new, P, ["zen3"])


def test_update_from_report_without_values_raises() -> None:
    with pytest.raises(ChecksError, match="no performance values"):
        update_from_report(_refs(), _report(1.0, cases=[]), "zen4")


def test_report_value_in_band_passes() -> None:
    result = parse_report(_report(6.0))
    assert result.ok and result.num_cases == 1 and result.cases[0].key == "stream_check/1_core"


@pytest.mark.parametrize(
    ("value", "lower", "upper", "bounds"),
    [(4.0, -0.5, None, "[5, inf]"), (13.0, None, 0.2, "[-inf, 12]")],
    ids=["below", "above"],
)
def test_report_value_outside_band_fails_naming_check_metric_value_reference_bounds(
    value, lower, upper, bounds
) -> None:
    result = parse_report(_report(value, lower=lower, upper=upper, result="fail", phase="performance"))
    assert result.failures == (
        f"stream_check/1_core: Triad = {value:g} GB/s is outside its band: reference 10 GB/s, bounds {bounds} GB/s",
    )


def test_report_band_judged_even_when_reframe_passed() -> None:
    assert not parse_report(_report(1.0)).ok


def test_report_zero_cases_fails() -> None:
    result = parse_report({"session_info": {"num_cases": 0}, "runs": []})
    assert not result.ok and "no test case" in result.failures[0]


def test_report_sanity_failure_names_phase_and_reason() -> None:
    tc = {
        "display_name": "module_smoke_check %module=zlib/1.2.13",
        "result": "fail",
        "fail_phase": "sanity",
        "fail_reason": "pattern not found",
    }
    assert parse_report(_report(0, cases=[tc])).failures == (
        "module_smoke_check %module=zlib/1.2.13: sanity: pattern not found",
    )


def test_report_without_session_info_raises() -> None:
    with pytest.raises(ChecksError, match="not a ReFrame run report"):
        parse_report({"runs": []})


def test_report_is_readable_by_the_gate_summary() -> None:
    summary = summarise_reframe(_report(4.0, result="fail", phase="performance"), b"x")
    assert summary.cases == 1 and summary.failures == 1
    assert [(p.metric, p.value, p.ok) for p in summary.performance] == [("Triad", 4.0, False)]


def _tp(name="zen4"):
    t = load_matrix().target(name)
    return TargetPrefix(t, f"/cvmfs/r/versions/2023.06/software/linux/{t.subdir}")


def test_config_local_partition_per_target_with_lmod_and_archspec_processor() -> None:
    cfg = config([_tp("zen4"), _tp("x86_64_generic")], num_cpus=2)
    (system,) = cfg["systems"]
    assert system["modules_system"] == "lmod"
    zen4, generic = system["partitions"]
    assert (zen4["name"], zen4["scheduler"], zen4["launcher"]) == ("zen4", "local", "local")
    assert zen4["features"] == ["cpu", "arch_zen4"]
    assert zen4["env_vars"] == [
        ["MODULEPATH", "/cvmfs/r/versions/2023.06/software/linux/x86_64/amd/zen4/modules/all"]
    ]
    assert zen4["processor"]["arch"] == "zen4" and zen4["processor"]["num_cpus"] == 2
    assert generic["processor"]["arch"] == "x86_64"


def test_config_site_file_adds_slurm_system_first() -> None:
    site = parse_site(
        {
            "system": "hpc",
            "hostnames": ["login.*"],
            "partitions": [{"name": "rome", "target": "zen4", "access": ["-p rome"], "num_cpus": 128}],
        },
        P,
    )
    cfg = config([_tp()], num_cpus=2, site=site)
    hpc, local = cfg["systems"]
    (part,) = hpc["partitions"]
    assert hpc["name"] == "hpc" and local["name"] == "eessi_local"
    assert (part["scheduler"], part["launcher"], part["access"], part["features"]) == (
        "slurm",
        "srun",
        ["-p rome"],
        ["cpu", "arch_zen4", "slurm"],
    )


def test_config_site_partition_for_unconfigured_target_raises() -> None:
    site = parse_site(
        {"system": "hpc", "hostnames": ["x"], "partitions": [{"name": "p", "target": "zen3", "num_cpus": 4}]},
        P,
    )
    with pytest.raises(ChecksError, match=r"tests a configured target \(zen4\): 'p' tests 'zen3'; fix: add"):
        config([_tp()], num_cpus=2, site=site)


def test_site_file_missing_key_raises_with_fix() -> None:
    with pytest.raises(
        ChecksError, match=r"references.yaml: \(top level\): 'hostnames' is a required property; fix: add"
    ):
        parse_site({"system": "hpc", "partitions": []}, P)


def test_reframe_argv_and_env_select_partition_and_target() -> None:
    paths = RunPaths.under(Path("/w"))
    argv = reframe_argv("reframe", paths, Path("/c"), "eessi_local:zen4")
    assert argv[argv.index("--system") + 1] == "eessi_local:zen4"
    assert argv[argv.index("--report-file") + 1] == "/w/report.json" and "--report-junit" in argv
    env = reframe_env(_tp(), Path("/r.yaml"), {"RFM_CONFIG_FILES": "x", "PATH": "/bin"})
    assert "RFM_CONFIG_FILES" not in env and env["EESSI_PIPELINE_TARGET"] == "zen4"
    assert env["MODULEPATH"].endswith("zen4/modules/all") and env["LMOD_CMD"]


def test_config_of_a_stack_on_the_compat_layer_puts_the_layers_programs_first() -> None:
    """The checks run the modules as a user of the published stack does: python3 is the layer's."""
    t = load_matrix().target("zen4")
    layer = "/cvmfs/r/versions/2023.06/compat/linux/x86_64"
    on_layer = TargetPrefix(t, f"/cvmfs/r/versions/2023.06/software/linux/{t.subdir}", layer)
    (part,) = config([on_layer], num_cpus=2)["systems"][0]["partitions"]
    env = dict(part["env_vars"])
    assert env["PATH"] == f"{layer}/usr/bin:{layer}/bin:$PATH"
    assert env["LOCPATH"] == f"{layer}/usr/lib/locale"
    assert env["GCONV_PATH"] == f"{layer}/usr/lib/x86_64-linux-gnu/gconv"
    (host_linked,) = config([_tp("zen4")], num_cpus=2)["systems"][0]["partitions"]
    assert [k for k, _ in host_linked["env_vars"]] == ["MODULEPATH"]
