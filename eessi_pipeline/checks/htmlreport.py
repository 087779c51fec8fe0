"""A report of ReFrame check runs for people: markdown and one self-contained HTML file, with plots.

The core is pure: :func:`summarise` turns ``(target, RunResult)`` pairs into a typed :class:`Summary`
(each case's verdict, performance values against their reference band, and why a case failed),
and :func:`render_markdown`, :func:`render_html` and :func:`summary_json` turn that into text.
:func:`plot_png` draws one chart (a target's metric of one check over its cases or scales, with
the reference line and the band) with matplotlib's Agg canvas; :func:`write_report` writes
``report.html`` (plots inline as data URIs, inline CSS, nothing fetched from elsewhere),
``report.md`` (plots as PNG files beside it) and ``report.json`` (the summary for tools).
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .references import ChecksError
from .report import Case, RunResult

HTML_NAME = "report.html"
MARKDOWN_NAME = "report.md"
JSON_NAME = "report.json"
DEFAULT_TITLE = "ReFrame checks"

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True, slots=True)
class Measure:
    """One performance value of a case against its band (absolute bounds, ``None``: unbounded)."""

    metric: str
    value: float
    unit: str
    reference: float | None
    lower: float | None
    upper: float | None
    in_band: bool
    emulated: str = ""  # the emulator the value was measured under: recorded, not judged

    def band_text(self) -> str:
        """The band in words: ``≥ 5``, ``≤ 12``, ``5 to 12``, or ``any``; with the unit."""
        lo, hi, unit = self.lower, self.upper, f" {self.unit}" if self.unit else ""
        if lo is not None and hi is not None:
            return f"{lo:g} to {hi:g}{unit}"
        if lo is not None:
            return f"≥ {lo:g}{unit}"
        if hi is not None:
            return f"≤ {hi:g}{unit}"
        return "any"

    def text(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.emulated:
            return f"{self.metric} = {self.value:g}{unit} (emulated: not judged; {self.emulated})"
        if self.reference is None:
            return f"{self.metric} = {self.value:g}{unit} (no reference)"
        verdict = "in band" if self.in_band else "OUT OF BAND"
        return (
            f"{self.metric} = {self.value:g}{unit} {verdict} "
            f"(reference {self.reference:g}{unit}, band {self.band_text()})"
        )


@dataclass(frozen=True, slots=True)
class CaseRow:
    name: str
    key: str
    system: str
    result: str  # what ReFrame said
    verdict: str  # what this pipeline decides: fail when ReFrame failed or a value is out of band
    seconds: float
    measures: tuple[Measure, ...]
    reasons: tuple[str, ...]
    job: str = ""  # "squeue job 12 on n1": the scheduler, job id and nodes of a case run as a job

    @property
    def where(self) -> str:
        """The system and partition, and the job when the case was one."""
        return f"{self.system} ({self.job})" if self.job else self.system


@dataclass(frozen=True, slots=True)
class Point:
    label: str  # the case's scale or parameters, e.g. 1_core
    case: str
    measure: Measure


@dataclass(frozen=True, slots=True)
class Chart:
    """One plot: a metric of one check on one target, a point per case."""

    slug: str  # unique, safe as a file name: zen4-stream_check-Triad
    target: str
    check: str
    metric: str
    unit: str
    points: tuple[Point, ...]

    @property
    def title(self) -> str:
        return f"{self.target}: {self.check} {self.metric}" + (f" ({self.unit})" if self.unit else "")


@dataclass(frozen=True, slots=True)
class TargetSummary:
    target: str
    ok: bool
    cases: tuple[CaseRow, ...]
    problems: tuple[str, ...]  # failures of the run that no case carries (no case ran)
    failures: tuple[str, ...]  # every failure, in words
    charts: tuple[Chart, ...]

    def count(self, verdict: str) -> int:
        return sum(1 for c in self.cases if c.verdict == verdict)

    @property
    def others(self) -> int:
        return len(self.cases) - self.count("pass") - self.count("fail")


@dataclass(frozen=True, slots=True)
class Summary:
    title: str
    targets: tuple[TargetSummary, ...]

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.targets)


@dataclass(frozen=True, slots=True)
class ReportPaths:
    html: Path
    markdown: Path
    json: Path
    plots: tuple[Path, ...] = ()


# -- the model (pure) --------------------------------------------------------------------------


def _measure(case: Case) -> tuple[Measure, ...]:
    out = []
    for p in case.perf:
        lo, hi = p.reference.bounds() if p.reference is not None else (None, None)
        out.append(
            Measure(
                p.metric,
                p.value,
                p.reference.unit if p.reference is not None else p.unit,
                p.reference.value if p.reference is not None else None,
                lo,
                hi,
                p.in_band(),
                p.emulated,
            )
        )
    return tuple(out)


def case_row(case: Case) -> CaseRow:
    """A case as a row of the report; a skipped or expected-failure case keeps ReFrame's reason."""
    reasons = case.failures
    if not reasons and case.result != "pass" and (case.fail_reason or "").strip():
        reasons = ((case.fail_reason or "").strip()[:400],)
    verdict = "fail" if not case.ok else case.result
    measures = _measure(case)
    return CaseRow(
        case.name, case.key, case.system, case.result, verdict, case.seconds, measures, reasons, case.job
    )


def _check_and_label(row: CaseRow) -> tuple[str, str]:
    """``stream_check/1_core`` -> (stream_check, 1_core); a name ``c %p=v`` -> (c, p=v)."""
    if "/" in row.key:
        check, label = row.key.split("/", 1)
        return check, label
    check, _, params = row.name.partition(" %")
    return check, params.replace(" %", ", ") or row.name


def _slug(*parts: str) -> str:
    return "-".join(_UNSAFE.sub("_", p).strip("_") or "x" for p in parts)


def charts_of(target: str, rows: Sequence[CaseRow], taken: set[str] | None = None) -> tuple[Chart, ...]:
    """One chart per check and metric, points in case order; slugs unique within ``taken``."""
    groups: dict[tuple[str, str], list[Point]] = {}
    units: dict[tuple[str, str], str] = {}
    for row in rows:
        check, label = _check_and_label(row)
        for m in row.measures:
            groups.setdefault((check, m.metric), []).append(Point(label, row.name, m))
            if m.unit:
                units.setdefault((check, m.metric), m.unit)
    used = taken if taken is not None else set()
    charts = []
    for (check, metric), points in groups.items():
        slug = base = _slug(target, check, metric)
        n = 2
        while slug in used:
            slug, n = f"{base}-{n}", n + 1
        used.add(slug)
        charts.append(Chart(slug, target, check, metric, units.get((check, metric), ""), tuple(points)))
    return tuple(charts)


def summarise(results: Iterable[tuple[str, RunResult]], title: str = DEFAULT_TITLE) -> Summary:
    """The report's model from ``(target name, run result)`` pairs, in the given order (pure)."""
    targets: list[TargetSummary] = []
    seen: set[str] = set()
    slugs: set[str] = set()
    for name, result in results:
        if name in seen:
            raise ChecksError(
                f"target {name!r} is given twice; fix: give each target one report (--from NAME=REPORT)"
            )
        seen.add(name)
        rows = tuple(case_row(c) for c in result.cases)
        case_failures = {f for c in result.cases for f in c.failures}
        problems = tuple(f for f in result.failures if f not in case_failures)
        targets.append(
            TargetSummary(name, result.ok, rows, problems, result.failures, charts_of(name, rows, slugs))
        )
    if not targets:
        raise ChecksError("no ReFrame run to report on; fix: give at least one report")
    return Summary(title, tuple(targets))


def target_of(result: RunResult) -> str | None:
    """The partition all cases ran on (the checks name local partitions after their target), else None."""
    parts = {c.system.split(":", 1)[1] for c in result.cases if ":" in c.system}
    return parts.pop() if len(parts) == 1 else None


def summary_json(summary: Summary, plot_files: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The summary as JSON-ready data for tools (pure)."""
    files = plot_files or {}
    return {
        "title": summary.title,
        "ok": summary.ok,
        "targets": [
            {
                "target": t.target,
                "ok": t.ok,
                "cases": len(t.cases),
                "passed": t.count("pass"),
                "failed": t.count("fail"),
                "other": t.others,
                "failures": list(t.failures),
                "results": [
                    {
                        "name": c.name,
                        "key": c.key,
                        "system": c.system,
                        "job": c.job,
                        "result": c.result,
                        "verdict": c.verdict,
                        "seconds": round(c.seconds, 3),
                        "reasons": list(c.reasons),
                        "performance": [
                            {
                                "metric": m.metric,
                                "value": m.value,
                                "unit": m.unit,
                                "reference": m.reference,
                                "lower": m.lower,
                                "upper": m.upper,
                                "in_band": m.in_band,
                                # only for a value measured under emulation: not judged
                                **({"emulated": m.emulated} if m.emulated else {}),
                            }
                            for m in c.measures
                        ],
                    }
                    for c in t.cases
                ],
                "plots": [files[ch.slug] for ch in t.charts if ch.slug in files],
            }
            for t in summary.targets
        ],
    }


# -- markdown (pure) ---------------------------------------------------------------------------


def _verdict_word(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _md_cell(text: str) -> str:
    escaped = html.escape(text, quote=False).replace("|", "\\|")
    return "<br>".join(line.strip() for line in escaped.splitlines()) or " "


def _md_result(row: CaseRow) -> str:
    shown = f"**{row.verdict}**" if row.verdict == "fail" else row.verdict
    return shown if row.verdict == row.result else f"{shown} (ReFrame: {row.result})"


def render_markdown(summary: Summary, plot_files: Mapping[str, str] | None = None) -> str:
    """The report as markdown: an overview, then per target a table of its cases and its plots (pure).

    ``plot_files`` maps a chart's slug to the PNG's path relative to the markdown file.
    """
    files = plot_files or {}
    out = [f"# {summary.title}: {_verdict_word(summary.ok)}", ""]
    out += ["| Target | Verdict | Cases | Passed | Failed | Other |", "|---|---|---:|---:|---:|---:|"]
    for t in summary.targets:
        out.append(
            f"| {_md_cell(t.target)} | {_verdict_word(t.ok)} | {len(t.cases)} | {t.count('pass')} "
            f"| {t.count('fail')} | {t.others} |"
        )
    for t in summary.targets:
        out += ["", f"## {t.target}: {_verdict_word(t.ok)}", ""]
        out += [f"- {_md_cell(p)}" for p in t.problems]
        if t.problems:
            out.append("")
        if t.cases:
            out += ["| Case | System | Result | Time | Performance | Reason |", "|---|---|---|---:|---|---|"]
            for c in t.cases:
                perf = "<br>".join(_md_cell(m.text()) for m in c.measures) or " "
                reasons = "<br>".join(_md_cell(r) for r in c.reasons) or " "
                out.append(
                    f"| {_md_cell(c.name)} | {_md_cell(c.where)} | {_md_result(c)} | {c.seconds:.1f} s "
                    f"| {perf} | {reasons} |"
                )
        for ch in t.charts:
            if ch.slug in files:
                out += ["", f"![{_md_cell(ch.title)}]({files[ch.slug]})"]
    return "\n".join(out) + "\n"


# -- HTML (pure) -------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; padding: 0 1em; color: #222; }
h1, h2 { font-weight: 600; }
table { border-collapse: collapse; margin: 1em 0; width: 100%; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; white-space: nowrap; }
tr.fail td { background: #fdecea; }
.pass { color: #1a7f37; font-weight: 600; }
.fail { color: #c62828; font-weight: 600; }
.other { color: #8a6d00; font-weight: 600; }
code { font-family: ui-monospace, monospace; font-size: 0.95em; }
ul.perf { list-style: none; margin: 0; padding: 0; }
ul.perf li.out { color: #c62828; }
td.reason { white-space: pre-wrap; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; }
""".strip()


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _html_verdict(verdict: str) -> str:
    cls = verdict if verdict in ("pass", "fail") else "other"
    return f'<span class="{cls}">{_e(verdict)}</span>'


def _html_case(c: CaseRow) -> str:
    result = _html_verdict(c.verdict) + ("" if c.verdict == c.result else f" (ReFrame: {_e(c.result)})")
    items = "".join(f'<li class="{"in" if m.in_band else "out"}">{_e(m.text())}</li>' for m in c.measures)
    perf = f'<ul class="perf">{items}</ul>' if items else ""
    reasons = "<br>".join(_e(r) for r in c.reasons)
    return (
        f'<tr class="{"fail" if c.verdict == "fail" else "ok"}"><td><code>{_e(c.name)}</code></td>'
        f'<td>{_e(c.where)}</td><td>{result}</td><td class="num">{c.seconds:.1f} s</td>'
        f'<td>{perf}</td><td class="reason">{reasons}</td></tr>'
    )


def render_html(summary: Summary, plot_pngs: Mapping[str, bytes] | None = None) -> str:
    """The report as one self-contained HTML page: inline CSS, plots as data URIs (pure).

    ``plot_pngs`` maps a chart's slug to its PNG bytes.
    """
    pngs = plot_pngs or {}
    title = f"{summary.title}: {_verdict_word(summary.ok)}"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f'<h1>{_e(summary.title)}: <span class="{"pass" if summary.ok else "fail"}">'
        f"{_verdict_word(summary.ok)}</span></h1>",
        "<table><thead><tr><th>Target</th><th>Verdict</th><th>Cases</th><th>Passed</th><th>Failed</th>"
        "<th>Other</th></tr></thead><tbody>",
    ]
    for t in summary.targets:
        out.append(
            f'<tr><td><a href="#target-{_slug(t.target)}">{_e(t.target)}</a></td>'
            f'<td>{_html_verdict("pass" if t.ok else "fail")}</td><td class="num">{len(t.cases)}</td>'
            f'<td class="num">{t.count("pass")}</td><td class="num">{t.count("fail")}</td>'
            f'<td class="num">{t.others}</td></tr>'
        )
    out.append("</tbody></table>")
    for t in summary.targets:
        out.append(
            f'<section id="target-{_slug(t.target)}"><h2>{_e(t.target)}: '
            f"{_html_verdict('pass' if t.ok else 'fail')}</h2>"
        )
        if t.problems:
            out.append("<ul>" + "".join(f'<li class="fail">{_e(p)}</li>' for p in t.problems) + "</ul>")
        if t.cases:
            out.append(
                "<table><thead><tr><th>Case</th><th>System</th><th>Result</th><th>Time</th>"
                "<th>Performance</th><th>Reason</th></tr></thead><tbody>"
            )
            out += [_html_case(c) for c in t.cases]
            out.append("</tbody></table>")
        for ch in t.charts:
            if ch.slug in pngs:
                data = base64.b64encode(pngs[ch.slug]).decode("ascii")
                out.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{_e(ch.title)}">'
                    f"<figcaption>{_e(ch.title)}</figcaption></figure>"
                )
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# -- plots and files ---------------------------------------------------------------------------

_OK, _BAD, _REF, _BAND, _NONE = "#1a7f37", "#c62828", "#1f4e9c", "#6c9bd2", "#666666"


def plot_png(chart: Chart) -> bytes:
    """One chart as PNG bytes: a point per case against its reference line and band.

    A band without an upper bound is shaded to the top of the plot and marked with an arrow there.
    matplotlib is imported here, so the rest of the package works without it.
    """
    try:
        from matplotlib.artist import Artist
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
    except ImportError as e:  # pragma: no cover - matplotlib is a dependency
        raise ChecksError(
            "matplotlib is not installed, so no plot can be drawn; "
            "fix: install the project's dependencies (pip install -e .), matplotlib among them"
        ) from e

    ms = [p.measure for p in chart.points]
    tops = [m.value for m in ms] + [v for m in ms for v in (m.reference, m.lower, m.upper) if v is not None]
    bottoms = [0.0] + [m.value for m in ms] + [m.lower for m in ms if m.lower is not None]
    ymin, ymax = min(bottoms), max(tops)
    span = (ymax - ymin) or abs(ymax) or 1.0
    ymin = ymin - 0.05 * span if ymin < 0 else 0.0
    ymax = ymax + 0.25 * span

    n = len(chart.points)
    fig = Figure(figsize=(max(6.0, 1.3 * n + 4.0), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    half = 0.35
    for i, m in enumerate(ms):
        if m.reference is not None:
            lo = m.lower if m.lower is not None else ymin
            if m.upper is not None:
                ax.fill_between([i - half, i + half], lo, m.upper, color=_BAND, alpha=0.3, linewidth=0)
            else:  # open-ended: the shading fades out towards the top, an arrow points on
                fade = lo + 0.75 * (ymax - lo)
                ax.fill_between([i - half, i + half], lo, fade, color=_BAND, alpha=0.3, linewidth=0)
                steps = 6
                for k in range(steps):
                    a = fade + (ymax - fade) * k / steps
                    b = fade + (ymax - fade) * (k + 1) / steps
                    alpha = 0.3 * (1 - (k + 1) / (steps + 1))
                    ax.fill_between([i - half, i + half], a, b, color=_BAND, alpha=alpha, linewidth=0)
                ax.annotate(
                    "",
                    xy=(i + half * 0.7, ymax),
                    xytext=(i + half * 0.7, ymax - 0.15 * span),
                    arrowprops={"arrowstyle": "->", "color": _REF, "linewidth": 1.2},
                )
            for bound in (m.lower, m.upper):
                if bound is not None:
                    ax.hlines(bound, i - half, i + half, colors=_REF, linestyles="dashed", linewidth=0.8)
            ax.hlines(m.reference, i - half, i + half, colors=_REF, linewidth=2)
            marker, colour = ("o", _OK) if m.in_band else ("X", _BAD)
        else:
            marker, colour = "D", _NONE
        ax.plot([i], [m.value], marker=marker, markersize=9, linestyle="none", color=colour)
        ax.annotate(f"{m.value:g}", (i, m.value), textcoords="offset points", xytext=(9, -3), fontsize=8)
    ax.set_xticks(range(n), [p.label for p in chart.points])
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(ymin, ymax)
    ax.set_ylabel(f"{chart.metric} ({chart.unit})" if chart.unit else chart.metric)
    ax.set_title(chart.title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    refs = [m for m in ms if m.reference is not None]
    handles: list[Artist] = []
    if any(m.in_band for m in refs):
        handles.append(Line2D([], [], marker="o", color=_OK, linestyle="none", label="measured, in band"))
    if any(not m.in_band for m in refs):
        handles.append(
            Line2D([], [], marker="X", color=_BAD, linestyle="none", label="measured, out of band")
        )
    if len(refs) < len(ms):
        handles.append(
            Line2D([], [], marker="D", color=_NONE, linestyle="none", label="measured, no reference")
        )
    if refs:
        handles.append(Line2D([], [], color=_REF, linewidth=2, label="reference"))
        handles.append(Patch(color=_BAND, alpha=0.3, label="band (lower to upper)"))
    if any(m.upper is None for m in refs):
        handles.append(
            Line2D([], [], marker="$\\uparrow$", color=_REF, linestyle="none", label="no upper bound")
        )
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def write_report(
    results: Iterable[tuple[str, RunResult]], out_dir: Path, *, title: str = DEFAULT_TITLE
) -> ReportPaths:
    """Write ``report.html``, ``report.md``, ``report.json`` and one PNG per chart into ``out_dir``.

    ``results``: ``(target name, RunResult)`` pairs, e.g. ``[(o.target, o.result) for o in outcomes]``.
    """
    summary = summarise(results, title)
    charts = [ch for t in summary.targets for ch in t.charts]
    pngs = {ch.slug: plot_png(ch) for ch in charts}
    files = {slug: f"{slug}.png" for slug in pngs}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        plots = []
        for slug, data in pngs.items():
            plots.append(out_dir / files[slug])
            plots[-1].write_bytes(data)
        paths = ReportPaths(out_dir / HTML_NAME, out_dir / MARKDOWN_NAME, out_dir / JSON_NAME, tuple(plots))
        paths.html.write_text(render_html(summary, pngs), encoding="utf-8")
        paths.markdown.write_text(render_markdown(summary, files), encoding="utf-8")
        data_json = summary_json(summary, files)
        data_json["files"] = {"html": HTML_NAME, "markdown": MARKDOWN_NAME, "plots": sorted(files.values())}
        paths.json.write_text(json.dumps(data_json, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise ChecksError(f"{out_dir}: cannot write the report ({e}); fix: choose a writable --out") from e
    return paths


__all__ = [
    "CaseRow",
    "Chart",
    "Measure",
    "Point",
    "ReportPaths",
    "Summary",
    "TargetSummary",
    "case_row",
    "charts_of",
    "plot_png",
    "render_html",
    "render_markdown",
    "summarise",
    "summary_json",
    "target_of",
    "write_report",
]
