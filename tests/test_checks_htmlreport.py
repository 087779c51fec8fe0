"""The report of ReFrame runs for people: model, markdown, HTML, plots, files and the CLI."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eessi_pipeline.checks.htmlreport import (
    case_row,
    charts_of,
    plot_png,
    render_html,
    render_markdown,
    summarise,
    summary_json,
    target_of,
    write_report,
)
from eessi_pipeline.checks.references import ChecksError
from eessi_pipeline.checks.report import RunResult, parse_report
from eessi_pipeline.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCALES = ("1_core", "2_cores", "1_node")
METRICS = ("Copy", "Triad")

# -- ReFrame 4.10 run reports, shaped like the ones `reframe --report-file` writes for checks/software


def _stream_case(
    scale: str,
    values: dict[str, float],
    *,
    partition: str = "zen4",
    ref: float = 40.0,
    lower: float | None = -0.5,
    upper: float | None = None,
    result: str = "pass",
    reason: str | None = None,
) -> dict[str, Any]:
    perf = {}
    for metric, value in values.items():
        ok = ref == 0 or (
            value >= ref * (1 + (lower or -1e9)) and (upper is None or value <= ref * (1 + upper))
        )
        perf[f"eessi_local:{partition}:{metric}"] = [
            value,
            ref,
            lower,
            upper,
            "GB/s",
            "pass" if ok else "fail",
        ]
    return {
        "name": f"stream_check %scale={scale}",
        "display_name": f"stream_check %scale={scale}",
        "reference_key": f"stream_check/{scale}",
        "system": "eessi_local",
        "partition": partition,
        "result": result,
        "fail_phase": "performance" if result == "fail" else None,
        "fail_reason": reason,
        "time_total": 1.62,
        "perfvalues": perf,
    }


def _smoke_case(
    module: str,
    *,
    partition: str = "zen4",
    result: str = "pass",
    phase: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    return {
        "name": f"module_smoke_check %module={module}",
        "display_name": f"module_smoke_check %module={module}",
        "reference_key": f"module_smoke_check/{module}",
        "system": "eessi_local",
        "partition": partition,
        "result": result,
        "fail_phase": phase,
        "fail_reason": reason,
        "time_total": 1.28,
        "perfvalues": {},
    }


def _report(*cases: dict[str, Any]) -> dict[str, Any]:
    failures = sum(1 for c in cases if c["result"] == "fail")
    return {
        "session_info": {
            "data_version": "4.2",
            "version": "4.10.0",
            "hostname": "vm",
            "num_cases": len(cases),
            "num_failures": failures,
        },
        "runs": [
            {"num_cases": len(cases), "num_failures": failures, "run_index": 0, "testcases": list(cases)}
        ],
        "restored_cases": [],
    }


def _zen4_failing() -> dict[str, Any]:
    """zen4: smoke of zlib fails sanity, STREAM 2_cores Triad falls below its band (ReFrame failed it too)."""
    return _report(
        _smoke_case("numpy/2.2.6"),
        _smoke_case(
            "zlib/1.2.13", result="fail", phase="sanity", reason="pattern 'zlib' not found\nin stdout"
        ),
        _stream_case("1_core", {"Copy": 43.4375, "Triad": 35.702}),
        _stream_case(
            "2_cores", {"Copy": 45.0, "Triad": 12.5}, upper=0.2, result="fail", reason="reference(s) not met"
        ),
        _stream_case("1_node", {"Copy": 101.76, "Triad": 74.23}),
    )


def _generic_passing() -> dict[str, Any]:
    """x86_64_generic: no references yet (ReFrame's default 0), everything passes."""
    return _report(
        _smoke_case("numpy/2.2.6", partition="x86_64_generic"),
        *(_stream_case(s, {"Copy": 80.0, "Triad": 60.0}, partition="x86_64_generic", ref=0) for s in SCALES),
    )


def _table(markdown: str, target: str) -> list[list[str]]:
    """The cells of the rows of ``target``'s case table (header and separator left out)."""
    section = markdown.split(f"\n## {target}: ", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ")]
    assert rows[0].startswith("| Case |")
    return [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows[1:]]


def _both() -> list[tuple[str, RunResult]]:
    return [("zen4", parse_report(_zen4_failing())), ("x86_64_generic", parse_report(_generic_passing()))]


# -- the model ---------------------------------------------------------------------------------


def test_summary_verdicts_counts_and_overall_fail() -> None:
    summary = summarise(_both())
    zen4, generic = summary.targets
    assert not summary.ok and not zen4.ok and generic.ok
    assert [c.verdict for c in zen4.cases] == ["pass", "fail", "pass", "fail", "pass"]
    assert (zen4.count("pass"), zen4.count("fail"), zen4.others) == (3, 2, 0)
    assert (len(generic.cases), generic.count("pass")) == (4, 4)


def test_summary_value_out_of_band_fails_even_when_reframe_passed() -> None:
    report = _report(_stream_case("1_core", {"Triad": 5.0}, lower=-0.5))
    report["runs"][0]["testcases"][0]["perfvalues"]["eessi_local:zen4:Triad"][5] = "pass"  # ReFrame's word
    (row,) = summarise([("zen4", parse_report(report))]).targets[0].cases
    assert (row.result, row.verdict) == ("pass", "fail")
    assert row.reasons == (
        "stream_check/1_core: Triad = 5 GB/s is outside its band: reference 40 GB/s, bounds [20, inf] GB/s",
    )
    assert "**fail** (ReFrame: pass)" in render_markdown(summarise([("zen4", parse_report(report))]))


def test_summary_skipped_case_keeps_reframe_reason_and_counts_as_other() -> None:
    skipped = _smoke_case("GROMACS/2024.1", result="skip", reason="module not installed for zen4")
    target = summarise([("zen4", parse_report(_report(_smoke_case("numpy/2.2.6"), skipped)))]).targets[0]
    assert target.ok and target.others == 1
    assert target.cases[1].reasons == ("module not installed for zen4",)


def test_summary_run_without_cases_fails_with_problem_shown() -> None:
    summary = summarise([("zen4", parse_report(_report()))])
    assert not summary.ok
    assert summary.targets[0].problems == (
        "ReFrame ran no test case: no check matched the selected system or partition",
    )
    assert "- ReFrame ran no test case" in render_markdown(summary)
    assert "ReFrame ran no test case" in render_html(summary)


@pytest.mark.parametrize(
    ("results", "message"),
    [
        ([], "no ReFrame run to report on"),
        ([("zen4", RunResult(0, ())), ("zen4", RunResult(0, ()))], "target 'zen4' is given twice"),
    ],
    ids=["nothing", "same-target-twice"],
)
def test_summary_bad_input_raises(results: list[tuple[str, RunResult]], message: str) -> None:
    with pytest.raises(ChecksError, match=message):
        summarise(results)


def test_charts_one_per_check_and_metric_with_scales_as_points() -> None:
    rows = [case_row(c) for c in parse_report(_zen4_failing()).cases]
    charts = charts_of("zen4", rows)
    assert [(c.slug, c.unit) for c in charts] == [
        ("zen4-stream_check-Copy", "GB/s"),
        ("zen4-stream_check-Triad", "GB/s"),
    ]
    triad = charts[1]
    assert [p.label for p in triad.points] == list(SCALES)
    assert [p.measure.in_band for p in triad.points] == [True, False, True]
    assert [(p.measure.lower, p.measure.upper) for p in triad.points] == [(20, None), (20, 48), (20, None)]


def test_charts_slugs_stay_unique_for_unsafe_target_names() -> None:
    taken: set[str] = set()
    rows = [case_row(c) for c in parse_report(_zen4_failing()).cases]
    first = charts_of("a/b", rows, taken)
    second = charts_of("a b", rows, taken)
    slugs = [c.slug for c in first + second]
    assert len(set(slugs)) == 4 and all(re.fullmatch(r"[A-Za-z0-9_.-]+", s) for s in slugs)


def test_target_of_is_the_single_partition_else_none() -> None:
    assert target_of(parse_report(_zen4_failing())) == "zen4"
    mixed = _report(_smoke_case("numpy/2.2.6"), _smoke_case("zlib/1.2.13", partition="zen3"))
    assert target_of(parse_report(mixed)) is None
    assert target_of(parse_report(_report())) is None


# -- markdown ----------------------------------------------------------------------------------


def test_markdown_has_a_row_per_case_in_order() -> None:
    md = render_markdown(summarise(_both()))
    zen4 = _table(md, "zen4")
    assert [r[0] for r in zen4] == [c["display_name"] for c in _zen4_failing()["runs"][0]["testcases"]]
    assert all(len(r) == 6 for r in zen4)
    assert len(_table(md, "x86_64_generic")) == 4
    assert md.startswith("# ReFrame checks: FAIL\n")
    assert "| zen4 | FAIL | 5 | 3 | 2 | 0 |" in md and "| x86_64_generic | PASS | 4 | 4 | 0 | 0 |" in md


def test_markdown_failed_performance_case_shows_value_band_and_reason() -> None:
    rows = {r[0]: r for r in _table(render_markdown(summarise(_both())), "zen4")}
    _, system, result, seconds, perf, reason = rows["stream_check %scale=2_cores"]
    assert (system, result, seconds) == ("eessi_local:zen4", "**fail**", "1.6 s")
    assert perf.split("<br>") == [
        "Copy = 45 GB/s in band (reference 40 GB/s, band 20 to 48 GB/s)",
        "Triad = 12.5 GB/s OUT OF BAND (reference 40 GB/s, band 20 to 48 GB/s)",
    ]
    assert reason == (
        "stream_check/2_cores: Triad = 12.5 GB/s is outside its band: reference 40 GB/s, bounds [20, 48] GB/s"
    )
    one_core = rows["stream_check %scale=1_core"]
    assert one_core[2] == "pass" and one_core[5] == ""
    assert "Triad = 35.702 GB/s in band (reference 40 GB/s, band ≥ 20 GB/s)" in one_core[4]


def test_markdown_sanity_failure_shows_phase_and_reason_on_one_row() -> None:
    rows = {r[0]: r for r in _table(render_markdown(summarise(_both())), "zen4")}
    assert rows["module_smoke_check %module=zlib/1.2.13"][5] == (
        "module_smoke_check %module=zlib/1.2.13: sanity: pattern 'zlib' not found<br>in stdout"
    )


def test_markdown_without_reference_says_so() -> None:
    rows = _table(render_markdown(summarise(_both())), "x86_64_generic")
    assert rows[1][4] == "Copy = 80 GB/s (no reference)<br>Triad = 60 GB/s (no reference)"


def test_markdown_links_plots_only_when_given() -> None:
    summary = summarise(_both())
    assert "![" not in render_markdown(summary)
    md = render_markdown(summary, {"zen4-stream_check-Triad": "zen4-stream_check-Triad.png"})
    assert md.count("![") == 1
    assert "![zen4: stream_check Triad (GB/s)](zen4-stream_check-Triad.png)" in md


@settings(max_examples=60, deadline=None)
@given(reason=st.text(min_size=1, max_size=80))
def test_markdown_any_reason_keeps_the_table_shape(reason: str) -> None:
    report = _report(_smoke_case("zlib/1.2.13", result="fail", phase="run", reason=reason))
    md = render_markdown(summarise([("zen4", parse_report(report))]))
    (row,) = _table(md, "zen4")
    assert len(row) == 6 and row[2] == "**fail**"


# -- HTML --------------------------------------------------------------------------------------


def test_html_is_self_contained_without_external_urls() -> None:
    summary = summarise(_both())
    pngs = {c.slug: plot_png(c) for t in summary.targets for c in t.charts[:1]}
    page = render_html(summary, pngs)
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    sources = re.findall(r'\bsrc="([^"]*)"', page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert all(h.startswith("#") for h in re.findall(r'\bhref="([^"]*)"', page))
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:", page)
    for external in ("http:", "https:", "//", "url(", "@import", "<link", "<script"):
        assert external not in text, external


def test_html_shows_band_reason_and_escapes_report_text() -> None:
    report = _zen4_failing()
    report["runs"][0]["testcases"][1]["fail_reason"] = "<script>alert(1)</script> & more"
    page = render_html(summarise([("zen4", parse_report(report))]))
    assert "Triad = 12.5 GB/s OUT OF BAND (reference 40 GB/s, band 20 to 48 GB/s)" in page
    assert "is outside its band: reference 40 GB/s, bounds [20, 48] GB/s" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page and "<script>" not in page
    assert page.count('<tr class="fail">') == 2


# -- plots and files ---------------------------------------------------------------------------


def test_plot_png_is_a_png_of_sensible_size() -> None:
    rows = [case_row(c) for c in parse_report(_zen4_failing()).cases]
    data = plot_png(charts_of("zen4", rows)[1])
    assert data[:8] == PNG_MAGIC
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert 400 <= width <= 2000 and 200 <= height <= 1000


def test_matplotlib_is_imported_only_when_plotting() -> None:
    code = (
        "import sys, eessi_pipeline.cli, eessi_pipeline.checks.htmlreport; print('matplotlib' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"


def test_write_report_writes_html_markdown_json_and_pngs(tmp_path: Path) -> None:
    out = tmp_path / "report"
    paths = write_report(_both(), out)
    assert (paths.html, paths.markdown, paths.json) == (
        out / "report.html",
        out / "report.md",
        out / "report.json",
    )
    assert len(paths.plots) == 4 and all(
        p.parent == out and p.read_bytes()[:8] == PNG_MAGIC for p in paths.plots
    )
    md = paths.markdown.read_text(encoding="utf-8")
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(linked) == sorted(p.name for p in paths.plots)
    assert all((paths.markdown.parent / name).is_file() for name in linked)
    page = paths.html.read_text(encoding="utf-8")
    embedded = [base64.b64decode(d) for d in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]
    assert sorted(embedded) == sorted(p.read_bytes() for p in paths.plots)
    data = json.loads(paths.json.read_text(encoding="utf-8"))
    assert data["ok"] is False and data["files"]["html"] == "report.html"
    zen4 = data["targets"][0]
    assert (zen4["target"], zen4["cases"], zen4["passed"], zen4["failed"]) == ("zen4", 5, 3, 2)
    triad = zen4["results"][3]["performance"][1]
    assert triad == {
        "metric": "Triad", "value": 12.5, "unit": "GB/s", "reference": 40.0, "lower": 20.0, "upper": 48.0,
        "in_band": False,
    }  # fmt: skip


def test_summary_json_lists_only_given_plots() -> None:
    data = summary_json(summarise(_both()), {"zen4-stream_check-Copy": "zen4-stream_check-Copy.png"})
    assert [t["plots"] for t in data["targets"]] == [["zen4-stream_check-Copy.png"], []]


def test_write_report_into_a_file_path_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ChecksError, match=r"cannot write the report .*fix: choose a writable --out"):
        write_report([("zen4", parse_report(_report(_smoke_case("numpy/2.2.6"))))], blocker / "out")


# -- the CLI -----------------------------------------------------------------------------------


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


def test_cli_report_writes_files_and_prints_their_paths(tmp_path: Path) -> None:
    zen4 = _write(tmp_path / "zen4.json", _zen4_failing())
    generic = _write(tmp_path / "generic.json", _generic_passing())
    out = io.StringIO()
    rc = main(
        [
            "checks",
            "report",
            "--from",
            str(zen4),
            "--from",
            f"generic={generic}",
            "--out",
            str(tmp_path / "r"),
        ],
        out,
    )
    assert rc == 0
    assert out.getvalue().splitlines() == [
        str(tmp_path / "r" / "report.html"),
        str(tmp_path / "r" / "report.md"),
    ]
    md = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    assert "## zen4: FAIL" in md and "## generic: PASS" in md  # inferred from the partition, and named
    assert (tmp_path / "r" / "zen4-stream_check-Triad.png").read_bytes()[:8] == PNG_MAGIC


def test_cli_report_dry_run_writes_nothing(tmp_path: Path) -> None:
    zen4 = _write(tmp_path / "zen4.json", _zen4_failing())
    out = io.StringIO()
    assert (
        main(
            ["checks", "report", "--from", str(zen4), "--out", str(tmp_path / "r"), "--dry-run", "--json"],
            out,
        )
        == 0
    )
    data = json.loads(out.getvalue())
    assert data["ok"] is False and str(tmp_path / "r" / "report.html") in data["would_write"]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"runs": []}, "not a ReFrame run report: no session_info"),
        ('{"session_info": ', r"not JSON \(Expecting value"),
        ({"session_info": {"num_cases": 1}, "runs": "all"}, r"not a ReFrame run report \(AttributeError"),
        (
            {"session_info": {}, "runs": [{"testcases": [{"perfvalues": {"s:p:Triad": ["fast"]}}]}]},
            r"not a ReFrame run report \(ValueError",
        ),
        (b"\xff\xfe\x00", "not UTF-8 text"),
        (None, "no such file"),
        (
            _report(_smoke_case("numpy/2.2.6"), _smoke_case("zlib/1.2.13", partition="zen3")),
            r"cannot tell which target the report is of \(.*fix: name it, --from TARGET=",
        ),
    ],
    ids=[
        "no-session-info",
        "not-json",
        "runs-not-a-list",
        "value-not-a-number",
        "binary",
        "missing",
        "two-partitions",
    ],
)
def test_cli_report_refuses_bad_report_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: Any, message: str
) -> None:
    path = tmp_path / "bad.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        _write(path, content)
    out = io.StringIO()
    assert main(["checks", "report", "--from", str(path), "--out", str(tmp_path / "r")], out) == 1
    err = capsys.readouterr().err
    assert re.search(rf"^eessi-pipeline: error: {re.escape(str(path))}: {message}", err), err
    assert out.getvalue() == "" and not (tmp_path / "r").exists()
