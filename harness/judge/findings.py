"""A finding: one difference between two records (or within one record), with its evidence.

Every check (:mod:`harness.judge.checks`) returns findings; :mod:`harness.judge.verdict` ranks them. A
finding's ``cause`` is a stable identifier of the likely cause (e.g. ``data-not-sharded``,
``collective-mismatch``): reports show it, scenarios state the cause they expect, and the
ranking puts root causes before their echoes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from harness.judge import library_errors

Severity = Literal["failure", "divergence", "note"]

#: What every rank and the launcher print once a distributed job has gone wrong, whatever the
#: cause: a finding that names a cause lists these among what it explains (``Finding.explains``).
#: A library's refusal (:mod:`library_errors`) is the exception such a rank raises, as a
#: ``python-exception`` is.
ECHOES = (
    "hang",
    "job-failed",
    "python-exception",
    *library_errors.CAUSES,
    "sigterm-of-survivors",
    "launcher-summary",
    "peer-reported-failure",
)


@dataclass(frozen=True, kw_only=True)
class Finding:
    """``severity``: ``failure`` and ``divergence`` decide the verdict; ``note`` only explains.
    ``confidence`` (0..1) orders findings of the same severity: how surely this is the cause.
    ``corroborating``: the finding explains a departure but is none by itself (a variable that
    differs between two rungs): it keeps its severity only beside a decisive finding of the same
    record, and is a note where it stands alone, so it can never turn parity into a departure.
    ``explains``: the causes this finding accounts for (uneven batches explain a collective
    mismatch and the hang that follows): the verdict ranks it above them and folds them into its
    evidence. ``kind``: the family of signal, open to checks from entry points (the built-in ones
    say ``failure``, ``metrics``, ``artifacts``, ``tensors``, ``contract``, ``environment``,
    ``logs``, ``ranks``, ``hyperparameters``, ``hang``). Every field is given by name."""

    kind: str
    severity: Severity
    title: str
    evidence: list[str] = field(default_factory=list)
    hint: str | None = None
    step: int | None = None
    cause: str | None = None
    rank: int | None = None
    confidence: float = 0.5
    corroborating: bool = False
    explains: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ranks_named(ranks: list[int]) -> str:
    """ "rank 2" or "ranks 0, 1, 3": how evidence names a group of ranks."""
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, sorted(ranks)))
