"""``harness run``, ``harness ladder`` and ``harness bisect``: the commands that run jobs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from harness.backends import backend_class, get_backend, parse_rung_list
from harness.backends.base import Backend, Progress
from harness.cli.arguments import job_from_args, report_files, rung_settings, writable_dir
from harness.cli.console import RungProgress, emit
from harness.cli.why_failed import why_it_failed
from harness.errors import UsageError
from harness.judge.protocol import Tolerance
from harness.judge.verdict import Verdict
from harness.ladder.climbing import climb
from harness.record.run_record import RunRecord
from harness.report import to_html, to_json, to_markdown, to_text
from harness.spec.job import JobSpec
from harness.spec.workload import Workload


def _run_rung(job: Workload, backend: Backend[Any, Any], args: argparse.Namespace) -> RunRecord:
    rung = backend.name
    progress = RungProgress(rung, backend.job_as_run(job), args.verbose)
    callback: Progress = progress
    status = None
    try:
        record = backend.run(job, args.records, progress=callback)
        status = record.status
    finally:
        progress.done(status)
    emit(f"{rung}: {record.status} ({record.root})")
    if record.status != "succeeded":
        for line in why_it_failed(record):
            emit(line)
    return record


def cmd_run(args: argparse.Namespace) -> int:
    job = job_from_args(args)
    backend = get_backend(args.rung, **rung_settings(args, [args.rung])[args.rung])
    if args.dry_run:  # needs no engine, SDK or credentials: nothing is started
        job.check_local_paths(f"job {job.name!r}")
        emit(backend.plan(job).describe())
        return 0
    writable_dir(args.records, "--records")
    return 0 if _run_rung(job, backend, args).status == "succeeded" else 1


def print_verdict(verdict: Verdict, args: argparse.Namespace) -> int:
    emit(to_text(verdict))
    for path, render in ((args.json, to_json), (args.html, to_html), (args.markdown, to_markdown)):
        if path is not None:
            path.write_text(render(verdict, at=path) + "\n", encoding="utf-8")  # records relative to the file
    return verdict.exit_code


def cmd_ladder(args: argparse.Namespace) -> int:
    job = job_from_args(args)
    names = parse_rung_list(args.rungs, where="--rungs") if args.rungs is not None else list(job.default_rungs)
    required = parse_rung_list(args.require, where="--require") if args.require is not None else []
    settings = rung_settings(args, names)
    writable_dir(args.records, "--records")
    report_files(args)
    lines: dict[str, RungProgress] = {}

    def progress(rung: str) -> Progress:
        lines[rung] = RungProgress(rung, backend_class(rung).job_as_run(job), args.verbose)
        return lines[rung]

    def done(record: RunRecord) -> None:
        lines[record.rung].done(record.status)
        emit(f"{record.rung}: {record.status} ({record.root})")

    try:
        result = climb(
            job,
            args.records,
            rungs=names,
            tolerance=Tolerance(args.metric_rtol, args.metric_atol, args.tensor_rtol, args.tensor_atol),
            options=settings.__getitem__,
            progress=progress,
            on_record=done,
            require=required,
            keep_going=args.keep_going,
        )
    finally:
        for line in lines.values():  # a rung that broke off: its progress stops, said once
            line.done(None)
    return print_verdict(result.verdict, args)


def cmd_bisect(args: argparse.Namespace) -> int:
    """Exit 0 when a dimension was named, 1 when none (or nothing departs)."""
    from harness.ladder import bisect

    job = job_from_args(args)
    if not isinstance(job, JobSpec):
        raise UsageError(
            f"bisect splits what changes between two training rungs; {job.name!r} is of the {job.kind} workload",
            hint="climb its ladder: harness ladder",
        )
    lower, _, upper = args.between.partition(",")
    settings = rung_settings(args, [upper])[upper]
    result = bisect.bisect(
        job,
        args.records,
        lower=lower,
        upper=upper,
        upper_options=settings,
        max_runs=args.max_runs,
        on_record=lambda r: emit(f"{r.rung}: {r.status} ({r.root})"),
    )
    emit(bisect.to_text(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return 0 if result.dimension else 1
