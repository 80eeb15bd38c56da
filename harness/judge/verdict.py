"""The verdict over a ladder of records: ``parity``, ``diverged`` or ``failed``, the first rung
that departs, the first divergent step, and the likely causes ranked with their evidence; or
``nothing-compared`` when only one rung ran, so that a record checked only on its own never
reads as parity between rungs.

Each rung is checked on its own (across its ranks) and against the rung below it (the ladder
changes one thing at a time), so the first rung with a failure or divergence is where the
difference came in. Causes are ranked by severity (failures, then divergences, then notes
that explain them), then by how surely each check identifies its cause.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from harness.errors import UsageError
from harness.judge.checks import registered
from harness.judge.failures import describe_failure
from harness.judge.findings import Finding
from harness.judge.protocol import Check, CheckContext, RunCheck, Tolerance
from harness.record.run_record import RunRecord

Outcome = Literal["parity", "nothing-compared", "diverged", "failed"]
_SEVERITY = {"failure": 0, "divergence": 1, "note": 2}


@dataclass
class Verdict:
    outcome: Outcome
    rungs: list[str]
    first_rung: str | None = None
    baseline_rung: str | None = None
    first_step: int | None = None
    findings: list[Finding] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    records: list[str] = field(default_factory=list)
    #: Rungs the ladder did not climb because it had departed below them, with the reason.
    not_run: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 when nothing departs (``nothing-compared`` included: ``--require`` makes a missing
        rung an error), else 1."""
        return 0 if self.outcome in ("parity", "nothing-compared") else 1

    @property
    def word(self) -> str:
        """The outcome as reports print it: ``PARITY``, ``NOTHING COMPARED``, ..."""
        return self.outcome.replace("-", " ").upper()

    @property
    def causes(self) -> list[str]:
        """Cause ids of the decisive findings, most likely first."""
        return [f.cause for f in self.findings if f.severity != "note" and f.cause]

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "rungs": self.rungs,
            "first_rung": self.first_rung,
            "baseline_rung": self.baseline_rung,
            "first_step": self.first_step,
            "findings": [f.to_dict() for f in self.findings],
            "skipped": self.skipped,
            "not_run": self.not_run,
            "records": self.records,
        }


def rank_findings(findings: list[Finding]) -> list[Finding]:
    ranked = sorted(findings, key=lambda f: (_SEVERITY[f.severity], -f.confidence))
    return fold_consequences(fold_restatements(ranked))


def fold_restatements(findings: list[Finding]) -> list[Finding]:
    """Two checks that name one cause (from the events and from the stacks, say) are one finding:
    the later, in ranked order, is folded into the first's evidence (``also: <title>``)."""
    first: dict[str, int] = {}
    result: list[Finding] = []
    for finding in findings:
        if finding.cause is None or finding.severity == "note" or finding.cause not in first:
            if finding.cause is not None and finding.severity != "note":
                first[finding.cause] = len(result)
            result.append(finding)
            continue
        index = first[finding.cause]
        kept = result[index]
        result[index] = replace(
            kept, evidence=[*kept.evidence, f"also: {finding.title}"], explains=(*kept.explains, *finding.explains)
        )
    return result


def fold_consequences(findings: list[Finding]) -> list[Finding]:
    """A finding that explains others (``Finding.explains``) leads: the findings whose cause it
    names are folded into its evidence (``consequence: <title>``), and it takes the gravest
    severity among them, so that the verdict leads with one cause and its consequences under it.
    Explanations chain (uneven batches explain a collective mismatch, which explains the hang):
    everything folds into the finding nothing else explains; where two explain each other, the
    one ranked first leads."""
    explaining = [f for f in findings if f.explains and f.severity != "note"]
    if not explaining:
        return findings
    order = {id(f): n for n, f in enumerate(findings)}
    owner: dict[int, Finding] = {}
    for finding in findings:
        parents = [
            e
            for e in explaining
            if e is not finding
            and finding.cause in e.explains
            and not (e.cause in finding.explains and order[id(finding)] < order[id(e)])
        ]
        if parents:
            owner[id(finding)] = parents[0]

    def root(finding: Finding) -> Finding:
        seen: set[int] = set()
        while id(finding) in owner and id(finding) not in seen:
            seen.add(id(finding))
            finding = owner[id(finding)]
        return finding

    folded: dict[int, list[Finding]] = {}
    kept: list[Finding] = []
    for finding in findings:
        top = root(finding)
        if top is finding:
            kept.append(finding)
        else:
            folded.setdefault(id(top), []).append(finding)
    result: list[tuple[bool, Finding]] = []
    for finding in kept:
        consequences = folded.get(id(finding)) or []
        if consequences:
            gravest = min((finding, *consequences), key=lambda f: _SEVERITY[f.severity]).severity
            finding = replace(
                finding,
                severity=gravest,
                evidence=[*finding.evidence, *(f"consequence: {c.title} ({c.cause})" for c in consequences)],
            )
        result.append((bool(consequences), finding))
    result.sort(key=lambda pair: (_SEVERITY[pair[1].severity], not pair[0], -pair[1].confidence))
    return [finding for _, finding in result]


def settle(findings: list[Finding]) -> list[Finding]:
    """Corroborating findings keep their severity beside a decisive finding that is not one of
    them; without one they are notes: they explain a departure, they never make one."""
    if any(f.severity != "note" and not f.corroborating for f in findings):
        return findings
    return [replace(f, severity="note") if f.corroborating and f.severity != "note" else f for f in findings]


def _findings_for(
    record: RunRecord, below: RunRecord | None, checks: tuple[Check, ...], context: CheckContext
) -> list[Finding]:
    """Every registered check on ``record``: run checks on it alone, pair checks against ``below``."""
    findings: list[Finding] = []
    for check in checks:
        if isinstance(check, RunCheck):
            findings += check(record, context)
        elif below is not None:
            findings += check(below, record, context)
    if below is None and record.status != "succeeded":
        findings.append(
            Finding(
                kind="failure",
                severity="failure",
                title=f"the job {record.status} on {record.rung}",
                evidence=describe_failure(record),
                cause="job-failed",
                confidence=0.3,
            )
        )
    return rank_findings(settle(findings))


#: Notes that say what a parity verdict rests on: which steps the replay compared and what it
#: left out, and what a topology change leaves uncompared (curves, weights). A parity verdict
#: keeps them, so that it never reads as a comparison that was not made.
WHAT_WAS_COMPARED = ("replay-compared", "topology-changes-numbers", "checkpoint-not-compared", "data-not-observed")


def judge(
    records: list[RunRecord],
    *,
    tolerance: Tolerance = Tolerance(),
    skipped: dict[str, str] | None = None,
) -> Verdict:
    """Walk the ladder upwards; stop at the first rung that fails or diverges. One record alone
    can fail its own checks, but never be at parity: there was nothing to compare it with. The
    records are judged by the checks of their workload."""
    workloads = sorted({record.manifest.workload for record in records})
    if len(workloads) > 1:
        raise UsageError(
            f"the records are of different workloads ({', '.join(workloads)}): no check judges one against another",
            hint="compare records of one workload",
        )
    checks = tuple(check for check in registered() if check.workload in workloads)
    context = CheckContext(tolerance)
    verdict = Verdict(
        "parity", [r.rung for r in records], skipped=dict(skipped or {}), records=[str(r.root) for r in records]
    )
    uncompared: list[Finding] = []
    for index, record in enumerate(records):
        below = records[index - 1] if index else None
        findings = _findings_for(record, below, checks, context)
        decisive = [f for f in findings if f.severity != "note"]
        if decisive:
            verdict.outcome = "failed" if decisive[0].severity == "failure" else "diverged"
            verdict.first_rung, verdict.baseline_rung = record.rung, below.rung if below else None
            steps = [f.step for f in decisive if f.step is not None]
            verdict.first_step = min(steps) if steps else None
            verdict.findings = findings
            return verdict
        uncompared += [f for f in findings if f.cause in WHAT_WAS_COMPARED]
    if len(records) < 2:
        verdict.outcome = "nothing-compared"
    verdict.findings = uncompared
    return verdict
