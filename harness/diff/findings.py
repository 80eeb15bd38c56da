"""A finding: one difference between two records (or within one record), with its evidence.

Every check module in this package returns findings; :mod:`harness.verdict` ranks them. A
finding's ``cause`` is a stable identifier of the likely cause (e.g. ``data-not-sharded``,
``collective-mismatch``): reports show it, scenarios state the cause they expect, and the
ranking puts root causes before their echoes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from harness.record import RunRecord

Kind = Literal[
    "failure", "metrics", "artifacts", "tensors", "contract", "environment", "logs", "ranks", "hyperparameters", "hang"
]
Severity = Literal["failure", "divergence", "note"]


@dataclass(frozen=True)
class Finding:
    """``severity``: ``failure`` and ``divergence`` decide the verdict; ``note`` only explains.
    ``confidence`` (0..1) orders findings of the same severity: how surely this is the cause."""

    kind: Kind
    severity: Severity
    title: str
    evidence: list[str] = field(default_factory=list)
    hint: str | None = None
    step: int | None = None
    cause: str | None = None
    rank: int | None = None
    confidence: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(baseline: RunRecord, candidate: RunRecord, *, rtol: float, atol: float) -> list[Finding]:
    """Every finding between two records, in the order the checks run."""
    from harness.diff import artifacts, contract, environment, failures, metrics

    return [
        *failures.check(baseline, candidate),
        *metrics.check(baseline, candidate, rtol=rtol, atol=atol),
        *artifacts.check(baseline, candidate, rtol=rtol, atol=atol),
        *contract.check(baseline, candidate),
        *environment.check(baseline, candidate),
    ]


def check_run(record: RunRecord) -> list[Finding]:
    """Every finding within one record (across its ranks and processes)."""
    from harness.diff import artifacts, hang, logs, ranks

    return [*ranks.check_run(record), *hang.check(record), *logs.check_run(record), *artifacts.check_run(record)]
