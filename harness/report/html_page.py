"""The HTML report: one self-contained page to attach to a ticket (loss curves of every rank with
axes, causes with evidence, environment and artifact differences, per-host timeline)."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from harness.judge.findings import Finding
from harness.judge.verdict import Verdict
from harness.record.run_record import RunRecord
from harness.report.verdict_text import (
    comparison_warnings,
    nothing_compared,
    record_labels,
    record_paths,
    where_it_departs,
)

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
_DASHES = ("", "7 4", "2 3", "10 3 2 3")  # one per record: identical curves stay visible when overlaid
_BADGE = {"parity": "#2ca02c", "nothing-compared": "#7f7f7f", "diverged": "#ff7f0e", "failed": "#d62728"}


_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
.badge{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:600}
.finding{border-left:4px solid #999;padding:4px 12px;margin:10px 0;background:#fafafa}
.failure{border-color:#d62728}.divergence{border-color:#ff7f0e}.note{border-color:#bbb}
pre{white-space:pre-wrap;overflow-wrap:anywhere;font-size:12px;margin:4px 0;background:#f3f3f3;padding:6px}
table{border-collapse:collapse;font-size:12.5px} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
.hint{color:#555;font-style:italic} .chart{margin:10px 0 22px}
.legend{font-size:12.5px;margin:2px 0 0 64px} .legend div{margin:1px 0} .legend b{display:inline-block;min-width:90px}
.key{display:inline-flex;align-items:center;gap:4px;margin-right:14px;white-space:nowrap}
svg text{font-family:system-ui,sans-serif} .tick{font-size:11px;fill:#444} .axis-title{font-size:12px;fill:#222}
"""

# The plot: viewBox size and the margins that hold the tick labels and axis titles.
_W, _H, _LEFT, _RIGHT, _TOP, _BOTTOM = 900, 320, 64, 16, 30, 46


@dataclass
class _Curve:
    record: str  # the record's label (record_labels)
    source: str  # rank-N, or a host where the record has no per-rank metrics
    colour: str
    dash: str
    values: list[float]


def _nice_step(span: float, count: int) -> float:
    raw = span / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    return float(next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9)))


def _ticks(low: float, high: float, count: int = 5, *, integer: bool = False) -> tuple[list[float], float]:
    """Round tick values that cover ``low..high`` (the first and last tick enclose them), and the step."""
    if high <= low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    step = _nice_step(high - low, count)
    if integer:
        step = max(1.0, float(math.ceil(step)))
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(i * step, 12) + 0.0 for i in range(first, last + 1)], step


def _tick_label(value: float, step: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or step < 1e-4:
        return f"{value:.3g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if not math.isclose(step * 10**decimals, round(step * 10**decimals)):
        decimals += 1  # 0.25, 2.5
    return f"{value:.{decimals}f}"


def _sources(metric: dict[str, list[float]], hosts: list[str]) -> list[str]:
    """Every rank's curve where the record has per-rank metrics, else every host's."""
    ranks = sorted((s for s in metric if re.fullmatch(r"rank-\d+", s)), key=lambda s: int(s.split("-")[1]))
    if ranks:
        return [s for s in ranks if metric[s]]
    known = [h for h in hosts if metric.get(h)]
    return known + sorted(s for s in metric if s not in known and metric[s] and s not in hosts)


def _shade(colour: str, fraction: float) -> str:
    """``colour`` mixed with white: ranks of one record share its hue, lighter by rank."""
    red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(c + (255 - c) * fraction):02x}" for c in (red, green, blue))


def _svg_chart(name: str, curves: list[_Curve], mark: int | None) -> str:
    finite = [v for curve in curves for v in curve.values if math.isfinite(v)]
    if not finite:
        return f"<p>{html.escape(name)}: no finite values to plot.</p>"
    longest = max(len(curve.values) for curve in curves)
    yticks, ystep = _ticks(min(finite), max(finite))
    xhigh = max(1, longest - 1)  # the axis ends at the last step; its ticks are round steps up to it
    xticks = [t for t in _ticks(0, xhigh, 8, integer=True)[0] if t <= xhigh]
    ylow, yhigh = yticks[0], yticks[-1]
    inner_w, inner_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x_at(i: float) -> float:
        return _LEFT + inner_w * (i / xhigh)

    def y_at(v: float) -> float:
        return _TOP + inner_h * (1 - (v - ylow) / (yhigh - ylow))

    title = html.escape(name)
    parts = [
        f'<svg class="chart" viewBox="0 0 {_W} {_H}" width="100%" role="img" aria-label="{title}" '
        f'data-metric="{title}" xmlns="http://www.w3.org/2000/svg"><title>{title}</title>',
        f'<text class="axis-title" x="{_LEFT}" y="{_TOP - 12}" font-weight="600">{title}</text>',
    ]
    grid, axes = ['<g class="grid" stroke="#e6e6e6" stroke-width="1">'], ['<g class="axis y-axis">']
    for value in yticks:
        y = y_at(value)
        grid.append(f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        axes.append(
            f'<line x1="{_LEFT - 5}" x2="{_LEFT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#444"/>'
            f'<text class="tick" x="{_LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{_tick_label(value, ystep)}</text>'
        )
    axes += ["</g>", '<g class="axis x-axis">']
    for value in xticks:
        x = x_at(value)
        grid.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{_H - _BOTTOM}"/>')
        axes.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_H - _BOTTOM}" y2="{_H - _BOTTOM + 5}" stroke="#444"/>'
            f'<text class="tick" x="{x:.1f}" y="{_H - _BOTTOM + 18}" text-anchor="middle">{int(value)}</text>'
        )
    axes.append("</g>")
    parts += [*grid, "</g>", *axes]
    parts += [
        f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{_H - _BOTTOM}" y2="{_H - _BOTTOM}" stroke="#444"/>',
        f'<line x1="{_LEFT}" x2="{_LEFT}" y1="{_TOP}" y2="{_H - _BOTTOM}" stroke="#444"/>',
        f'<text class="axis-title" x="{_LEFT + inner_w / 2:.1f}" y="{_H - 8}" text-anchor="middle">step</text>',
        f'<text class="axis-title" transform="translate(14 {_TOP + inner_h / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{title}</text>',
    ]
    if mark is not None and 0 <= mark <= xhigh:
        x = x_at(mark)
        parts.append(
            f'<line class="mark" x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{_H - _BOTTOM}" stroke="#d62728" '
            f'stroke-dasharray="4"/><text class="tick" x="{x + 4:.1f}" y="{_TOP + 12}" fill="#d62728">'
            f"first departs: step {mark}</text>"
        )
    for curve in curves:
        dash = f' stroke-dasharray="{curve.dash}"' if curve.dash else ""
        label = html.escape(f"{curve.record} {curve.source}")
        parts.append(
            f'<path class="curve" data-record="{html.escape(curve.record)}" data-source="{html.escape(curve.source)}" '
            f'fill="none" stroke="{curve.colour}" stroke-width="1.7" stroke-linecap="round" stroke-linejoin="round"'
            f'{dash} d="{_path(curve.values, x_at, y_at)}"><title>{label}</title></path>'
        )
    parts.append("</svg>")
    return f'<figure class="chart">{"".join(parts)}{_legend(curves)}</figure>'


def _path(values: list[float], x_at: Callable[[float], float], y_at: Callable[[float], float]) -> str:
    """Line segments through the finite points; a NaN or inf breaks the line, a lone point is a dot."""
    commands, pen_down = [], False
    for i, value in enumerate(values):
        if not math.isfinite(value):
            pen_down = False
            continue
        point = f"{x_at(i):.1f} {y_at(value):.1f}"
        lone = not (i + 1 < len(values) and math.isfinite(values[i + 1]))
        commands.append(f"L{point}" if pen_down else f"M{point}" + (" h0" if lone else ""))
        pen_down = True
    return " ".join(commands)


def _legend(curves: list[_Curve]) -> str:
    rows: dict[str, list[str]] = {}
    for curve in curves:
        dash = f' stroke-dasharray="{curve.dash}"' if curve.dash else ""
        rows.setdefault(curve.record, []).append(
            f'<span class="key"><svg width="30" height="10" aria-hidden="true"><line x1="1" x2="29" y1="5" y2="5" '
            f'stroke="{curve.colour}" stroke-width="2.2"{dash}/></svg>{html.escape(curve.source)}</span>'
        )
    body = "".join(f"<div><b>{html.escape(record)}</b>{''.join(keys)}</div>" for record, keys in rows.items())
    return f'<div class="legend">{body}</div>'


def _curves(verdict: Verdict, records: list[tuple[str, RunRecord]]) -> str:
    loaded = [(label, record, record.metrics()) for label, record in records]  # each metrics.json read once
    names: dict[str, None] = {}
    for _, _, metrics in loaded:
        names.update(dict.fromkeys(metrics))
    blocks = []
    for name in names:
        curves = []
        for index, (label, record, metrics) in enumerate(loaded):
            metric = metrics.get(name, {})
            sources = _sources(metric, record.hosts)
            colour, dash = _COLOURS[index % len(_COLOURS)], _DASHES[index % len(_DASHES)]
            for number, source in enumerate(sources):
                shade = _shade(colour, 0.6 * number / max(1, len(sources) - 1) if len(sources) > 1 else 0.0)
                curves.append(_Curve(label, source, shade, dash, list(metric[source])))
        if curves:
            blocks.append(_svg_chart(name, curves, verdict.first_step))
    return "".join(blocks) or "<p>No metrics were parsed (the job has no metric_definitions).</p>"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _timeline(records: list[tuple[str, RunRecord]]) -> str:
    rows = []
    for label, record in records:
        for host, result in record.manifest.hosts.items():
            reason = result.failure_reason or ""
            rows.append(
                [
                    label,
                    host,
                    result.started_at or "",
                    result.ended_at or "",
                    "" if result.exit_code is None else result.exit_code,
                    reason.splitlines()[0][:160] if reason else "",
                ]
            )
    return _table(["record", "host", "started", "ended", "exit", "failure"], rows)


def _artifacts(records: list[tuple[str, RunRecord]]) -> str:
    rows = []
    for label, record in records:
        summary = record.read_json("artifacts/summary.json") or {}
        for archive, info in summary.items():
            for name, entry in info.get("files", {}).items():
                rows.append(
                    [label, archive, name, entry["size"], entry["sha256"][:16], ", ".join(entry.get("hosts", []))]
                )
    headers = ["record", "archive", "file", "bytes", "sha256", "written by"]
    return _table(headers, rows) if rows else "<p>No artifacts.</p>"


def _finding_html(number: int, finding: Finding) -> str:
    evidence = html.escape("\n".join(finding.evidence))
    hint = f'<div class="hint">hint: {html.escape(finding.hint)}</div>' if finding.hint else ""
    cause = f" <code>{html.escape(finding.cause)}</code>" if finding.cause else ""
    return (
        f'<div class="finding {finding.severity}"><b>{number}. [{finding.severity}] {html.escape(finding.title)}</b>'
        f"{cause}<pre>{evidence}</pre>{hint}</div>"
    )


def _record_links(verdict: Verdict, at: Path | None) -> str:
    items = []
    for label, path, given in zip(
        record_labels(verdict.rungs), record_paths(verdict, at), verdict.records, strict=False
    ):
        href = quote(path) if at is not None else Path(given).absolute().as_uri()
        missing = "" if Path(given, "manifest.json").is_file() else " (not found when this report was written)"
        items.append(
            f'<li>{html.escape(label)}: <a href="{html.escape(href)}/"><code>{html.escape(path)}</code></a>'
            f"{missing}</li>"
        )
    return f"<ul>{''.join(items)}</ul>" if items else "<p>None.</p>"


def to_html(verdict: Verdict, *, at: Path | None = None) -> str:
    """One self-contained page (no scripts, no external files) for a ticket or a CI artifact; links
    to the records are relative to ``at``, where the page is written."""
    labelled = [
        (label, RunRecord.load(Path(p)))
        for label, p in zip(record_labels(verdict.rungs), verdict.records, strict=False)
        if Path(p, "manifest.json").is_file()
    ]
    decisive = [f for f in verdict.findings if f.severity != "note"]
    notes = [f for f in verdict.findings if f.severity == "note"]
    ladder = " → ".join(f"{html.escape(label)} ({html.escape(r.status)})" for label, r in labelled) or "none"
    skipped = "".join(f"<li>skipped {html.escape(r)}: {html.escape(why)}</li>" for r, why in verdict.skipped.items())
    skipped += "".join(f"<li>not run {html.escape(r)}: {html.escape(why)}</li>" for r, why in verdict.not_run.items())
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in comparison_warnings([r for _, r in labelled]))
    return "".join(
        [
            "<!doctype html><html><head><meta charset='utf-8'><title>harness verdict: ",
            html.escape(verdict.outcome),
            f"</title><style>{_STYLE}</style></head><body>",
            f'<h1>Verdict: <span class="badge" style="background:{_BADGE[verdict.outcome]}">',
            html.escape(verdict.word),
            "</span></h1>",
            f"<p>{html.escape(nothing_compared(verdict))}</p>" if verdict.outcome == "nothing-compared" else "",
            f"<p>Ladder: {ladder}</p>",
            f"<p><b>{html.escape(where_it_departs(verdict))}</b></p>" if verdict.first_rung else "",
            f'<ul class="warnings">{warnings}</ul>' if warnings else "",
            f"<ul>{skipped}</ul>" if skipped else "",
            "<h2>Likely causes</h2>",
            "".join(_finding_html(i, f) for i, f in enumerate(decisive, 1)) or "<p>None.</p>",
            "<h2>Loss curves</h2>",
            _curves(verdict, labelled),
            "<h2>What else differs</h2>",
            "".join(_finding_html(i, f) for i, f in enumerate(notes, 1)) or "<p>Nothing.</p>",
            "<h2>Artifacts</h2>",
            _artifacts(labelled),
            "<h2>Timeline</h2>",
            _timeline(labelled),
            "<h2>Records</h2>",
            _record_links(verdict, at),
            "</body></html>",
        ]
    )
