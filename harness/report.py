"""Reports of a verdict: terminal text, JSON (stable schema, docs/report.md), a self-contained
HTML page to attach to a ticket (loss-curve overlay, causes with evidence, environment and
artifact differences, per-host timeline), and a short Markdown summary for a pull request."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from harness.record import RunRecord
from harness.verdict import Verdict

REPORT_SCHEMA_VERSION = 1
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
_BADGE = {"parity": "#2ca02c", "nothing-compared": "#7f7f7f", "diverged": "#ff7f0e", "failed": "#d62728"}
_ICON = {"parity": "✅", "nothing-compared": "⚪", "diverged": "⚠️", "failed": "❌"}


def to_json(verdict: Verdict) -> str:
    return json.dumps({"schema_version": REPORT_SCHEMA_VERSION, **verdict.to_dict()}, indent=2)


def _where(verdict: Verdict) -> str:
    if not verdict.first_rung:
        return ""
    where = f"first departs on {verdict.first_rung}"
    if verdict.baseline_rung:
        where += f" (compared with {verdict.baseline_rung})"
    if verdict.first_step is not None:
        where += f" at step {verdict.first_step}"
    return where


def _nothing_compared(verdict: Verdict) -> str:
    return (f"only {verdict.rungs[0] if verdict.rungs else 'no rung'} ran: its own checks found nothing, "
            "but no other rung ran to compare it with (--require names the rungs that must run)")


def to_text(verdict: Verdict) -> str:
    lines = [f"verdict: {verdict.word}  (rungs: {' -> '.join(verdict.rungs) or 'none'})"]
    lines += [f"skipped {rung}: {reason}" for rung, reason in verdict.skipped.items()]
    if verdict.outcome == "nothing-compared":
        lines.append(_nothing_compared(verdict))
    if verdict.first_rung:
        lines.append(_where(verdict))
    for number, finding in enumerate(verdict.findings, 1):
        cause = f" ({finding.cause})" if finding.cause and finding.severity != "note" else ""
        lines.append(f"{number}. [{finding.severity}] {finding.title}{cause}")
        lines += [f"     {line}" for line in finding.evidence]
        if finding.hint:
            lines.append(f"     hint: {finding.hint}")
    return "\n".join(lines)


def to_markdown(verdict: Verdict) -> str:
    """A pull-request comment: the verdict, the top causes with their first evidence line."""
    lines = [
        f"### {_ICON[verdict.outcome]} Parity harness: **{verdict.outcome.replace('-', ' ')}**",
        "",
        f"Rungs: {' → '.join(f'`{r}`' for r in verdict.rungs) or 'none'}",
    ]
    if verdict.outcome == "nothing-compared":
        lines.append(f"\n{_md(_nothing_compared(verdict)).capitalize()}.")
    if verdict.first_rung:
        lines.append(f"\n{_where(verdict).capitalize()}.")
    decisive = [f for f in verdict.findings if f.severity != "note"][:3]
    if decisive:
        lines += ["", "| # | cause | finding | evidence |", "|---|---|---|---|"]
        for number, finding in enumerate(decisive, 1):
            evidence = finding.evidence[0] if finding.evidence else ""
            lines.append(f"| {number} | `{finding.cause or finding.kind}` | {_md(finding.title)} | {_md(evidence)} |")
        if decisive[0].hint:
            lines += ["", f"**Fix hint:** {_md(decisive[0].hint)}"]
    if verdict.skipped:
        lines += ["", "Skipped: " + "; ".join(f"`{r}` ({_md(why)})" for r, why in verdict.skipped.items())]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:300]


# --- HTML -----------------------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
.badge{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:600}
.finding{border-left:4px solid #999;padding:4px 12px;margin:10px 0;background:#fafafa}
.failure{border-color:#d62728}.divergence{border-color:#ff7f0e}.note{border-color:#bbb}
pre{white-space:pre-wrap;overflow-wrap:anywhere;font-size:12px;margin:4px 0;background:#f3f3f3;padding:6px}
table{border-collapse:collapse;font-size:12.5px} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
.legend span{margin-right:16px} .hint{color:#555;font-style:italic}
"""


def _svg_curves(name: str, series: list[tuple[str, list[float]]], mark: int | None) -> str:
    width, height, pad = 900, 260, 40
    values = [v for _, ys in series for v in ys]
    if not values:
        return ""
    longest = max(len(ys) for _, ys in series)
    low, high = min(values), max(values)
    span = (high - low) or 1.0

    def point(i: int, v: float) -> str:
        x = pad + (width - 2 * pad) * (i / max(1, longest - 1))
        y = height - pad - (height - 2 * pad) * ((v - low) / span)
        return f"{x:.1f},{y:.1f}"

    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="{html.escape(name)}">',
        f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="none" stroke="#ccc"/>',
        f'<text x="{pad}" y="{pad - 8}" font-size="12">{html.escape(name)}: {low:.4g} … {high:.4g}</text>',
        f'<text x="{width - pad}" y="{height - 12}" font-size="11" text-anchor="end">step ({longest})</text>',
    ]
    if mark is not None and longest > 1:
        x = point(mark, low).split(",")[0]
        parts.append(f'<line x1="{x}" x2="{x}" y1="{pad}" y2="{height - pad}" stroke="#d62728" stroke-dasharray="4"/>')
    for index, (label, ys) in enumerate(series):
        colour = _COLOURS[index % len(_COLOURS)]
        dash = ' stroke-dasharray="6 3"' if index else ""
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.6"{dash} '
            f'points="{" ".join(point(i, v) for i, v in enumerate(ys))}"><title>{html.escape(label)}</title></polyline>'
        )
    parts.append("</svg>")
    legend = "".join(
        f'<span style="color:{_COLOURS[i % len(_COLOURS)]}">■ {html.escape(label)}</span>'
        for i, (label, _) in enumerate(series)
    )
    return "".join(parts) + f'<div class="legend">{legend}</div>'


def _curves(verdict: Verdict, records: list[RunRecord]) -> str:
    loaded = [record.metrics() for record in records]  # each metrics.json read once
    names: dict[str, None] = {}
    for metrics in loaded:
        names.update(dict.fromkeys(metrics))
    blocks = []
    for name in names:
        series = [
            (f"{i + 1}. {r.rung} ({r.hosts[0]})", metrics.get(name, {}).get(r.hosts[0], []))
            for i, (r, metrics) in enumerate(zip(records, loaded, strict=True))
        ]
        blocks.append(_svg_curves(name, [s for s in series if s[1]], verdict.first_step))
    return "".join(blocks) or "<p>No metrics were parsed (the job has no metric_definitions).</p>"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _timeline(records: list[RunRecord]) -> str:
    rows = []
    for record in records:
        for host, result in record.manifest.get("hosts", {}).items():
            rows.append(
                [
                    record.rung,
                    host,
                    result.get("started_at"),
                    result.get("ended_at"),
                    result.get("exit_code"),
                    (result.get("failure_reason") or "").splitlines()[0][:120] if result.get("failure_reason") else "",
                ]
            )
    return _table(["rung", "host", "started", "ended", "exit", "failure"], rows)


def _artifacts(records: list[RunRecord]) -> str:
    rows = []
    for record in records:
        summary = record.read_json("artifacts/summary.json") or {}
        for archive, info in summary.items():
            for name, entry in info.get("files", {}).items():
                rows.append(
                    [record.rung, archive, name, entry["size"], entry["sha256"][:16], ", ".join(entry.get("hosts", []))]
                )
    return (
        _table(["rung", "archive", "file", "bytes", "sha256", "written by"], rows) if rows else "<p>No artifacts.</p>"
    )


def _finding_html(number: int, finding: Any) -> str:
    evidence = html.escape("\n".join(finding.evidence))
    hint = f'<div class="hint">hint: {html.escape(finding.hint)}</div>' if finding.hint else ""
    cause = f" <code>{html.escape(finding.cause)}</code>" if finding.cause else ""
    return (
        f'<div class="finding {finding.severity}"><b>{number}. [{finding.severity}] {html.escape(finding.title)}</b>'
        f"{cause}<pre>{evidence}</pre>{hint}</div>"
    )


def to_html(verdict: Verdict) -> str:
    """One self-contained page (no scripts, no external files) for a ticket or a CI artifact."""
    records = [RunRecord.load(Path(p)) for p in verdict.records if Path(p, "manifest.json").is_file()]
    decisive = [f for f in verdict.findings if f.severity != "note"]
    notes = [f for f in verdict.findings if f.severity == "note"]
    ladder = " → ".join(f"{html.escape(r.rung)} ({html.escape(r.status)})" for r in records) or "none"
    skipped = "".join(f"<li>{html.escape(r)}: {html.escape(why)}</li>" for r, why in verdict.skipped.items())
    return "".join(
        [
            "<!doctype html><html><head><meta charset='utf-8'><title>harness verdict: ",
            html.escape(verdict.outcome),
            f"</title><style>{_STYLE}</style></head><body>",
            f'<h1>Verdict: <span class="badge" style="background:{_BADGE[verdict.outcome]}">',
            html.escape(verdict.word),
            "</span></h1>",
            f"<p>{html.escape(_nothing_compared(verdict))}</p>" if verdict.outcome == "nothing-compared" else "",
            f"<p>Ladder: {ladder}</p>",
            f"<p><b>{html.escape(_where(verdict))}</b></p>" if verdict.first_rung else "",
            f"<ul>{skipped}</ul>" if skipped else "",
            "<h2>Likely causes</h2>",
            "".join(_finding_html(i, f) for i, f in enumerate(decisive, 1)) or "<p>None.</p>",
            "<h2>Loss curves</h2>",
            _curves(verdict, records),
            "<h2>What else differs</h2>",
            "".join(_finding_html(i, f) for i, f in enumerate(notes, 1)) or "<p>Nothing.</p>",
            "<h2>Artifacts</h2>",
            _artifacts(records),
            "<h2>Timeline</h2>",
            _timeline(records),
            "<h2>Records</h2><ul>",
            "".join(f"<li><code>{html.escape(str(r.root))}</code></li>" for r in records),
            "</ul>",
            "</body></html>",
        ]
    )
