"""What a check is: a function of one record (a run check) or of two (a pair check, baseline and
candidate), given one :class:`CheckContext`, returning :class:`~harness.judge.findings.Finding`
objects.

Every check has the same signature for its kind and takes everything else it needs from the
context, so adding a setting (a tolerance, say) never changes a check's signature, and a check
from another package (entry-point group ``harness.checks``, see :mod:`harness.judge.checks`) is
called exactly like a built-in one. A check declares its kind by the class it is registered
with: :class:`RunCheck` or :class:`PairCheck`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from harness.judge.findings import Finding
from harness.record.run_record import RunRecord

DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-6


@dataclass(frozen=True)
class Tolerance:
    """Where float noise ends and divergence begins: ``|a - b| <= atol + rtol * |a|``, with the
    baseline as ``a``. Metric curves and checkpoint tensors have their own, because they differ
    in scale and noise: a logged loss is rounded when printed, a tensor is not."""

    metric_rtol: float = DEFAULT_RTOL
    metric_atol: float = DEFAULT_ATOL
    tensor_rtol: float = DEFAULT_RTOL
    tensor_atol: float = DEFAULT_ATOL


@dataclass(frozen=True)
class CheckContext:
    """Everything a check is given besides the records: the one argument that grows when checks
    need more, instead of their signatures."""

    tolerance: Tolerance = field(default_factory=Tolerance)


RunCheckFn = Callable[[RunRecord, CheckContext], list[Finding]]
PairCheckFn = Callable[[RunRecord, RunRecord, CheckContext], list[Finding]]


@dataclass(frozen=True)
class RunCheck:
    """A check of one record on its own, across its ranks and processes: it finds faults that
    every rung shares and so no comparison can see. ``name`` identifies it in errors and docs."""

    name: str
    check: RunCheckFn
    #: The workload whose records it judges (``manifest.workload``); a check that names none is training's.
    workload: str = "training"

    def __call__(self, record: RunRecord, context: CheckContext) -> list[Finding]:
        return self.check(record, context)


@dataclass(frozen=True)
class PairCheck:
    """A check of a record (``candidate``) against the one below it on the ladder (``baseline``)."""

    name: str
    check: PairCheckFn
    #: The workload whose records it judges (``manifest.workload``); a check that names none is training's.
    workload: str = "training"

    def __call__(self, baseline: RunRecord, candidate: RunRecord, context: CheckContext) -> list[Finding]:
        return self.check(baseline, candidate, context)


Check = RunCheck | PairCheck
