"""Reports of a verdict: the terminal text and the JSON document (schema in docs/report.md)."""

from __future__ import annotations

import json

from harness.verdict import Verdict

REPORT_SCHEMA_VERSION = 1


def to_json(verdict: Verdict) -> str:
    return json.dumps({"schema_version": REPORT_SCHEMA_VERSION, **verdict.to_dict()}, indent=2)


def to_text(verdict: Verdict) -> str:
    lines = [f"verdict: {verdict.outcome.upper()}  (rungs: {' -> '.join(verdict.rungs) or 'none'})"]
    if verdict.first_rung:
        where = f"first departs on {verdict.first_rung}"
        if verdict.baseline_rung:
            where += f" (compared with {verdict.baseline_rung})"
        if verdict.first_step is not None:
            where += f" at step {verdict.first_step}"
        lines.append(where)
    for number, finding in enumerate(verdict.findings, 1):
        lines.append(f"{number}. [{finding.severity}] {finding.title}")
        lines += [f"     {line}" for line in finding.evidence]
        if finding.hint:
            lines.append(f"     hint: {finding.hint}")
    for rung, reason in verdict.skipped.items():
        lines.append(f"skipped {rung}: {reason}")
    return "\n".join(lines)
