"""Climbing the ladder: run one job on several rungs, skip those that cannot run here (with the
reason), and judge the records. The one entry point the CLI, the pytest plugin and notebooks share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.backends import RUNGS, get_backend
from harness.backends.base import Progress
from harness.errors import RungUnavailable, UsageError
from harness.jobspec import JobSpec
from harness.record import RunRecord
from harness.verdict import DEFAULT_ATOL, DEFAULT_RTOL, Verdict, judge

#: What a ladder climbs when no rungs are named: every rung this machine can run with the core
#: install; the others are reported as skipped, with the reason.
DEFAULT_RUNGS = ("local", "local-gpu", "docker", "sagemaker-local")


@dataclass
class LadderResult:
    verdict: Verdict
    records: list[RunRecord] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def climb(
    job: JobSpec,
    records_dir: Path,
    *,
    rungs: Sequence[str] = DEFAULT_RUNGS,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    options: Callable[[str], dict[str, object]] = lambda rung: {},
    progress: Callable[[str], Progress | None] = lambda rung: None,
    on_record: Callable[[RunRecord], None] = lambda record: None,
) -> LadderResult:
    """Run ``job`` on each rung in order and judge the records; raises :class:`RungUnavailable`
    when no rung at all can run here."""
    unknown = [rung for rung in rungs if rung not in RUNGS]
    if unknown:
        raise UsageError(f"unknown rung {unknown[0]!r}; choose from {', '.join(RUNGS)}")
    records: list[RunRecord] = []
    skipped: dict[str, str] = {}
    for rung in rungs:
        backend = get_backend(rung, **options(rung))
        try:
            backend.check(job)
        except RungUnavailable as exc:
            skipped[rung] = exc.message.split(": ", 1)[-1]
            continue
        record = backend.run(job, records_dir, progress=progress(rung))
        on_record(record)
        records.append(record)
    if not records:
        raise RungUnavailable(
            "no rung of the ladder can run here: " + "; ".join(f"{r}: {why}" for r, why in skipped.items()),
            hint="see `harness doctor`",
        )
    return LadderResult(judge(records, rtol=rtol, atol=atol, skipped=skipped), records, skipped)
