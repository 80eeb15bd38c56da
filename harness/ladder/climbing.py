"""Climbing the ladder: run one job on several rungs, skip those that cannot run here (with the
reason), and judge the records. The one entry point the CLI, the pytest plugin and notebooks share."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harness.backends import check_rung_names, get_backend
from harness.backends.base import Progress
from harness.errors import NoRungCanRun, RequiredRungUnavailable, RungUnavailable, UsageError
from harness.judge import replay
from harness.judge.protocol import Tolerance
from harness.judge.verdict import Verdict, judge
from harness.record.run_record import RunRecord
from harness.spec.job import JobSpec
from harness.spec.workload import Workload

#: What a training ladder climbs when no rungs are named, cheapest first (time, then money): the
#: single-process baseline, then every rung this machine can run with the core install; the
#: others are reported as skipped, with the reason. (A workload names its own: ``default_rungs``.)
DEFAULT_RUNGS = JobSpec.default_rungs


SpecT = TypeVar("SpecT", bound=Workload)


@dataclass(frozen=True)
class Step:
    """One rung of a ladder: its settings, and changes to the job on this rung only (a scenario's
    single-process first step, say)."""

    rung: str
    options: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        changes = {**self.overrides, **self.options}
        return self.rung + (f"({', '.join(f'{k}={v}' for k, v in changes.items())})" if changes else "")

    def job(self, base: SpecT) -> SpecT:
        return base.with_changes(self.overrides)


@dataclass
class LadderResult:
    verdict: Verdict
    records: list[RunRecord] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def climb(
    job: Workload,
    records_dir: Path,
    *,
    rungs: Sequence[str | Step] | None = None,
    tolerance: Tolerance = Tolerance(),
    options: Callable[[str], dict[str, Any]] = lambda rung: {},
    progress: Callable[[str], Progress | None] = lambda rung: None,
    on_record: Callable[[RunRecord], None] = lambda record: None,
    require: Sequence[str] = (),
    keep_going: bool = False,
) -> LadderResult:
    """Run ``job`` on each rung in order and judge the records; stop at the first rung that fails
    or departs from the one below (the rungs above it are listed as not run, with the reason),
    unless ``keep_going``. A rung is a name (its settings from ``options``) or a :class:`Step`;
    without any, the job's ``default_rungs``. Every rung must run the job's workload.
    Every rung's settings, and whether each rung in ``require`` can run, are checked before the
    first one runs; raises :class:`NoRungCanRun` when no rung at all can run here,
    :class:`RequiredRungUnavailable` when a required one cannot."""
    steps = [rung if isinstance(rung, Step) else Step(rung, options(rung)) for rung in rungs or job.default_rungs]
    check_rung_names([step.rung for step in steps])
    missing = [rung for rung in require if rung not in {step.rung for step in steps}]
    if missing:
        raise UsageError(
            f"--require names {', '.join(missing)}, which the ladder does not climb",
            hint="require only rungs of the ladder (--rungs)",
        )
    backends = [get_backend(step.rung, **step.options) for step in steps]  # bad settings: before anything runs
    other = next((backend for backend in backends if backend.workload != job.kind), None)
    if other is not None:
        raise UsageError(
            f"rung {other.name!r} runs {other.workload} jobs; {job.name!r} is of the {job.kind} workload",
            hint="climb the rungs of the job's own workload",
        )
    unavailable: dict[str, str] = {}
    for step, backend in zip(steps, backends, strict=True):
        try:
            backend.check(step.job(job))
        except RungUnavailable as exc:
            unavailable[step.label] = exc.reason
            if step.rung in require:
                raise RequiredRungUnavailable(step.rung, exc.reason) from None
    records: list[RunRecord] = []
    replayed = False
    skipped: dict[str, str] = {}
    not_run: dict[str, str] = {}
    for step, backend in zip(steps, backends, strict=True):
        if step.label in unavailable:
            skipped[step.label] = unavailable[step.label]
            continue
        if departed := (not keep_going and records and _departs(records, tolerance)):
            not_run[step.label] = f"the ladder departed at {departed}; --keep-going runs the rungs above it"
            continue
        record = backend.run(step.job(job), records_dir, progress=progress(step.rung))
        replay_job = replay.replay_job(record, step.job(job)) if any(r.rung == "single" for r in records) else None
        if not replayed and replay_job is not None:
            replayed = replay_in_one_process(record, replay_job)
        on_record(record)
        records.append(record)
    if not records:
        raise NoRungCanRun(skipped)
    verdict = judge(records, tolerance=tolerance, skipped=skipped)
    verdict.not_run = not_run
    return LadderResult(verdict, records, skipped)


def replay_in_one_process(record: RunRecord, replay_job: JobSpec) -> bool:
    """The first distributed run of a ladder that climbs from ``single`` replayed in one process
    (:func:`harness.judge.replay.replay_job`), into its own record's ``replay/``; False where the
    ``single`` rung cannot run the job."""
    single = get_backend("single")
    try:
        single.check(replay_job)
    except RungUnavailable:
        return False
    single.run(replay_job, replay.replay_root(record))
    return True


def _departs(records: list[RunRecord], tolerance: Tolerance) -> str | None:
    """The rung where the ladder departed, judging the newest record against the one below it (or
    on its own, at the bottom): each pair below was judged when its upper record came in."""
    verdict = judge(records[-2:], tolerance=tolerance)
    return verdict.first_rung if verdict.outcome in ("diverged", "failed") else None
