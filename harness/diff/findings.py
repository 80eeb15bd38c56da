"""A finding: one difference between two records (or within one), with its evidence."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from harness.record import RunRecord

Kind = Literal["failure", "metrics", "artifacts", "contract"]


@dataclass(frozen=True)
class Finding:
    """``severity``: ``divergence`` changes the verdict; ``note`` only explains one."""

    kind: Kind
    severity: Literal["failure", "divergence", "note"]
    title: str
    evidence: list[str] = field(default_factory=list)
    hint: str | None = None
    step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(baseline: RunRecord, candidate: RunRecord, *, rtol: float, atol: float) -> list[Finding]:
    """Every finding between two records, in the order the checks run."""
    from harness.diff import artifacts, contract, failures, metrics

    return [
        *failures.check(baseline, candidate),
        *metrics.check(baseline, candidate, rtol=rtol, atol=atol),
        *artifacts.check(baseline, candidate),
        *contract.check(baseline, candidate),
    ]
