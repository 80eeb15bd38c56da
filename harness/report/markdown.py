"""The Markdown report: a pull request's summary, full evidence folded, links to the records."""

from __future__ import annotations

import html
import re
from pathlib import Path
from urllib.parse import quote

from harness.judge.findings import Finding
from harness.judge.verdict import Verdict
from harness.report.verdict_text import nothing_compared, record_labels, record_paths, where_it_departs

_ICON = {"parity": "✅", "nothing-compared": "⚪", "diverged": "⚠️", "failed": "❌"}
_MARKDOWN_EVIDENCE_LIMIT = 40_000  # characters of evidence in one Markdown report (a PR comment holds 65,536)


def to_markdown(verdict: Verdict, *, at: Path | None = None) -> str:
    """A pull-request comment: the verdict, the causes in a table, each cause's whole evidence
    folded under it, the notes folded, and links to the records (relative to ``at``)."""
    lines = [
        f"### {_ICON[verdict.outcome]} Parity harness: **{verdict.outcome.replace('-', ' ')}**",
        "",
        f"Rungs: {' → '.join(f'`{r}`' for r in verdict.rungs) or 'none'}",
    ]
    if verdict.outcome == "nothing-compared":
        lines.append(f"\n{_md(nothing_compared(verdict)).capitalize()}.")
    if verdict.first_rung:
        lines.append(f"\n{where_it_departs(verdict).capitalize()}.")
    decisive = [f for f in verdict.findings if f.severity != "note"]
    notes = [f for f in verdict.findings if f.severity == "note"]
    budget = [_MARKDOWN_EVIDENCE_LIMIT]
    if decisive:
        lines += ["", "| # | cause | finding | evidence |", "|---|---|---|---|"]
        for number, finding in enumerate(decisive, 1):
            evidence = finding.evidence[0] if finding.evidence else ""
            more = f" (+{len(finding.evidence) - 1} lines below)" if len(finding.evidence) > 1 else ""
            lines.append(
                f"| {number} | `{finding.cause or finding.kind}` | {_md(finding.title)} | {_md(evidence)}{more} |"
            )
        if decisive[0].hint:
            lines += ["", f"**Fix hint:** {_md(decisive[0].hint, limit=None)}"]
        for number, finding in enumerate(decisive, 1):
            lines += ["", *_folded(f"{number}. {finding.title}", finding, budget)]
    if notes:
        lines += ["", f"<details><summary>What else differs ({len(notes)} note{'s' * (len(notes) != 1)})</summary>"]
        for finding in notes:
            lines += ["", f"- {_md(finding.title, limit=None)}", "", *_fence(finding.evidence, budget, indent="  ")]
        lines += ["", "</details>"]
    if verdict.skipped:
        lines += ["", "Skipped: " + "; ".join(f"`{r}` ({_md(why)})" for r, why in verdict.skipped.items())]
    if verdict.not_run:
        lines += ["", "Not run: " + "; ".join(f"`{r}` ({_md(why)})" for r, why in verdict.not_run.items())]
    if verdict.records:
        links = [
            f"[{label}]({quote(path)})"
            for label, path in zip(record_labels(verdict.rungs), record_paths(verdict, at), strict=False)
        ]
        lines += ["", "Records: " + " · ".join(links)]
    return "\n".join(lines) + "\n"


def _folded(summary: str, finding: Finding, budget: list[int]) -> list[str]:
    """A finding's whole evidence (and hint) under a ``<details>`` that GitHub shows folded."""
    count = len(finding.evidence)
    head = f"<details><summary>{html.escape(summary)}: evidence ({count} line{'s' * (count != 1)})</summary>"
    hint = ["", f"hint: {_md(finding.hint, limit=None)}"] if finding.hint else []
    return [head, "", *_fence(finding.evidence, budget), *hint, "", "</details>"]


def _fence(evidence: list[str], budget: list[int], indent: str = "") -> list[str]:
    """Evidence as a code block (a fence longer than any backtick run in it), within what is left
    of the report's budget; what does not fit is counted and pointed to."""
    if not evidence:
        return [f"{indent}(no evidence lines)"]
    kept: list[str] = []
    for line in evidence:
        if budget[0] - len(line) < 0:
            break
        budget[0] -= len(line) + 1
        kept.append(line)
    longest = max((len(run) for line in kept for run in re.findall(r"`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    block = [f"{indent}{fence}text", *(f"{indent}{line}" for line in kept), f"{indent}{fence}"]
    if len(kept) < len(evidence):
        block.append(f"{indent}… {len(evidence) - len(kept)} more lines in the JSON or HTML report")
    return block


def _md(text: str, limit: int | None = 300) -> str:
    """Text for one table cell or line: pipes escaped, on one line, cut (with a mark) at ``limit``."""
    flat = text.replace("|", "\\|").replace("\n", " ")
    return flat if limit is None or len(flat) <= limit else flat[: limit - 1] + "…"
