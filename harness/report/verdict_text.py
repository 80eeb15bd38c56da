"""What every report shares (labels, record paths, warnings), and the terminal text and JSON reports."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.judge.verdict import Verdict
from harness.record.run_record import RunRecord

REPORT_SCHEMA_VERSION = 1


# --- what every report shares -----------------------------------------------------------------------


def record_labels(rungs: Sequence[str]) -> list[str]:
    """One label per record, in ladder order: the rung's name, numbered where a rung appears more
    than once (``local #1``, ``local #2``), so that no two records read alike."""
    counts, seen, labels = Counter(rungs), Counter[str](), []
    for rung in rungs:
        seen[rung] += 1
        labels.append(f"{rung} #{seen[rung]}" if counts[rung] > 1 else rung)
    return labels


def record_paths(verdict: Verdict, at: Path | None = None) -> list[str]:
    """The verdict's records as reports name them: relative to the directory of the report file
    ``at`` (POSIX separators, e.g. ``../runs/<id>``), or absolute when there is no file."""
    paths = [Path(p).absolute() for p in verdict.records]
    if at is None:
        return [str(p) for p in paths]
    base = Path(at).absolute().parent
    relative = []
    for path in paths:
        try:
            relative.append(Path(os.path.relpath(path, base)).as_posix())
        except ValueError:  # another drive (Windows): no relative path exists
            relative.append(str(path))
    return relative


def comparison_warnings(records: Sequence[RunRecord]) -> list[str]:
    """What makes records something other than one job on different rungs: another job name, or
    another topology. Said before a verdict that compares them anyway (``harness diff``)."""
    if len(records) < 2:
        return []
    labels = record_labels([r.rung for r in records])
    warnings = []
    base, base_label = records[0], labels[0]
    for record, label in zip(records[1:], labels[1:], strict=True):
        ours, theirs = base.manifest.job.name, record.manifest.job.name
        if ours != theirs:
            warnings.append(
                f"the records are of different jobs: {ours!r} ({base_label}, {base.root.name}) and {theirs!r} "
                f"({label}, {record.root.name}); the verdict compares them all the same"
            )
        a, b = base.manifest.topology.model_dump(), record.manifest.topology.model_dump()
        changed = [
            f"{key.replace('_', ' ')} {_plain(a.get(key))} -> {_plain(b.get(key))}"
            for key in sorted(set(a) | set(b))
            if a.get(key) != b.get(key)
        ]
        if changed:
            warnings.append(
                f"the topologies differ ({base_label} -> {label}): {'; '.join(changed)}; curves are compared at "
                "equal samples seen where the batch per step changed, and per-host checks by host name"
            )
    return warnings


def _plain(value: Any) -> str:
    """A value as a person reads it: lists joined, strings unquoted, nothing cut."""
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    if value is None:
        return "none"
    return str(value)


def to_json(verdict: Verdict, *, at: Path | None = None) -> str:
    """The verdict in the documented schema; ``records`` as :func:`record_paths` names them."""
    report = {"schema_version": REPORT_SCHEMA_VERSION, **verdict.to_dict()}
    report["records"] = record_paths(verdict, at)
    return json.dumps(report, indent=2)


def where_it_departs(verdict: Verdict) -> str:
    if not verdict.first_rung:
        return ""
    where = f"first departs on {verdict.first_rung}"
    if verdict.baseline_rung:
        where += f" (compared with {verdict.baseline_rung})"
    if verdict.first_step is not None:
        where += f" at step {verdict.first_step}"
    return where


def nothing_compared(verdict: Verdict) -> str:
    return (
        f"only {verdict.rungs[0] if verdict.rungs else 'no rung'} ran: its own checks found nothing, "
        "but no other rung ran to compare it with (--require names the rungs that must run)"
    )


def to_text(verdict: Verdict) -> str:
    lines = [f"verdict: {verdict.word}  (rungs: {' -> '.join(verdict.rungs) or 'none'})"]
    lines += [f"skipped {rung}: {reason}" for rung, reason in verdict.skipped.items()]
    lines += [f"not run {rung}: {reason}" for rung, reason in verdict.not_run.items()]
    if verdict.outcome == "nothing-compared":
        lines.append(nothing_compared(verdict))
    if verdict.first_rung:
        lines.append(where_it_departs(verdict))
    for number, finding in enumerate(verdict.findings, 1):
        cause = f" ({finding.cause})" if finding.cause and finding.severity != "note" else ""
        lines.append(f"{number}. [{finding.severity}] {finding.title}{cause}")
        lines += [f"     {line}" for line in finding.evidence]
        if finding.hint:
            lines.append(f"     hint: {finding.hint}")
    return "\n".join(lines)
