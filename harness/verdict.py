"""The verdict over a ladder of records: ``parity``, ``diverged`` or ``failed``, the first rung
that departs from the one below it, the first divergent step, and the findings ranked.

Each rung is compared with the rung below it (the ladder changes one thing at a time), so the
first rung with a failure or divergence is where the difference came in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from harness.diff import Finding, compare
from harness.diff.failures import describe_failure
from harness.record import RunRecord

Outcome = Literal["parity", "diverged", "failed"]
_RANK = {"failure": 0, "divergence": 1, "note": 2}

DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-6


@dataclass
class Verdict:
    outcome: Outcome
    rungs: list[str]
    first_rung: str | None = None
    baseline_rung: str | None = None
    first_step: int | None = None
    findings: list[Finding] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 0 if self.outcome == "parity" else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome, "rungs": self.rungs, "first_rung": self.first_rung,
            "baseline_rung": self.baseline_rung, "first_step": self.first_step,
            "findings": [f.to_dict() for f in self.findings], "skipped": self.skipped,
        }


def judge(records: list[RunRecord], *, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
          skipped: dict[str, str] | None = None) -> Verdict:
    """Walk the ladder upwards; stop at the first rung that fails or diverges."""
    rungs = [r.rung for r in records]
    verdict = Verdict("parity", rungs, skipped=dict(skipped or {}))
    if records and records[0].status != "succeeded":
        verdict.outcome, verdict.first_rung = "failed", records[0].rung
        verdict.findings = [Finding("failure", "failure", f"the job {records[0].status} on {records[0].rung}",
                                    describe_failure(records[0]))]
        return verdict
    for below, above in zip(records, records[1:]):
        findings = sorted(compare(below, above, rtol=rtol, atol=atol), key=lambda f: _RANK[f.severity])
        decisive = [f for f in findings if f.severity != "note"]
        if decisive:
            verdict.outcome = "failed" if decisive[0].severity == "failure" else "diverged"
            verdict.first_rung, verdict.baseline_rung = above.rung, below.rung
            steps = [f.step for f in decisive if f.step is not None]
            verdict.first_step = min(steps) if steps else None
            verdict.findings = findings
            return verdict
    return verdict
