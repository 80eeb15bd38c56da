"""``harness diff`` and ``harness show``: the commands that read records."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.cli.arguments import report_files
from harness.cli.console import duration, emit, plural, wrapped
from harness.cli.job_commands import print_verdict
from harness.cli.why_failed import exit_code, failure_line, why_it_failed
from harness.judge.protocol import Tolerance
from harness.judge.verdict import judge
from harness.record.models import HostResult, Manifest, RankResult
from harness.record.run_record import RunRecord
from harness.report import comparison_warnings


def cmd_diff(args: argparse.Namespace) -> int:
    records = [RunRecord.load(args.baseline), RunRecord.load(args.candidate)]
    report_files(args)
    for warning in comparison_warnings(records):  # another job or topology: compared all the same, but said
        emit(f"harness: warning: {warning}", err=True)
    tolerance = Tolerance(args.metric_rtol, args.metric_atol, args.tensor_rtol, args.tensor_atol)
    return print_verdict(judge(records, tolerance=tolerance), args)


def cmd_show(args: argparse.Namespace) -> int:
    record = RunRecord.load(args.record)
    for line in show_lines(record):
        emit(line)
    return 0


def show_lines(record: RunRecord) -> Iterator[str]:
    """A record, readable: what ran and how it ended, each host (exit code, the failure's line,
    its log), each rank, each metric once, the artifacts, the rung's facts."""
    m = record.manifest
    yield f"{m.run_id}: job {m.job.name} on {m.rung}, {m.status}"
    if not m.complete:
        yield "  INCOMPLETE: the run was cut off (the harness stopped before it ended)"
    yield f"  record: {record.root} (file paths below are relative to it; README.md says what each file holds)"
    yield f"  started {m.started_at}, ended {m.ended_at or '-'}{_took(m)}; harness {m.harness_version}"
    topology = m.topology
    yield (
        f"  {plural(len(topology.hosts), 'host')} x {plural(topology.processes_per_host, 'process')}, "
        f"world size {topology.world_size} ({topology.distribution}, {topology.launcher} launcher)"
    )
    if m.status not in ("succeeded", "running"):
        yield from why_it_failed(record, relative=True)[:-1]  # all but "more: harness show"
    yield "hosts"
    for host in topology.hosts:
        result = m.hosts.get(host, HostResult())
        yield f"  {host}: exit {exit_code(result.exit_code)}"
        if result.failure_reason:
            by = f" (written by the {result.failure_written_by})" if result.failure_written_by else ""
            yield f"    failure{by}:"
            yield from wrapped(failure_line(result.failure_reason), "      ")
        if record.host_log(host).is_file():
            yield f"    log: {_relative(record, record.host_log(host))}"
    ranks, logs, stacks = m.ranks, record.rank_logs(), record.rank_stacks()
    if ranks or logs:
        yield "ranks"
    for rank in sorted({int(r) for r in ranks} | set(logs)):
        info = ranks.get(str(rank), RankResult())
        on = f" on {info.host}" if info.host else ""
        pid = f" (pid {info.pid})" if info.pid is not None else ""
        ended = f", ended {info.ended_at}" if info.ended_at else ""
        source = f" ({info.ended_at_from})" if ended and info.ended_at_from not in (None, "probe") else ""
        yield f"  rank {rank}{on}{pid}{ended}{source}"
        if info.exception:
            yield from wrapped(info.exception, "    exception: ", "      ")
        if rank in logs:
            yield f"    log: {_relative(record, logs[rank])}"
        if rank in stacks and stacks[rank].stat().st_size:
            yield f"    stacks: {_relative(record, stacks[rank])}"
    metrics = record.metrics()
    if metrics:
        yield "metrics"
    for name, sources in metrics.items():
        yield from _metric_lines(name, sources)
    if m.artifacts:
        yield "artifacts"
    for archive, archived in m.artifacts.items():
        clashes = archived.clashes
        yield (
            f"  {archive}: {plural(archived.files, 'file')}"
            + (f", {len(clashes)} written by several hosts: {', '.join(sorted(clashes))}" if clashes else "")
        )
    for archive, uri in m.uploaded.items():
        yield f"  uploaded {archive}: {uri}"
    if m.checkpoints:
        points = m.checkpoints
        yield (
            f"checkpoints: {plural(len(points.files), 'file')} synced to {points.s3_uri}"
            + (f", {len(points.clashes)} written by several hosts" if points.clashes else "")
        )
    if m.rung_facts:
        yield "rung facts"
        yield from _facts(m.rung_facts, "  ")


def _relative(record: RunRecord, path: Path) -> str:
    return path.relative_to(record.root).as_posix()


def _took(manifest: Manifest) -> str:
    import datetime as dt

    if manifest.ended_at is None:
        return ""
    try:
        start = dt.datetime.fromisoformat(manifest.started_at.replace("Z", "+00:00"))
        end = dt.datetime.fromisoformat(manifest.ended_at.replace("Z", "+00:00"))
    except ValueError:
        return ""
    return f" (took {duration((end - start).total_seconds())})"


def _metric_lines(name: str, sources: dict[str, list[float]]) -> Iterator[str]:
    """One line per metric: a series several sources logged alike is shown once, with the
    sources named (a host's launcher output and its rank 0 usually print the same lines)."""
    series: dict[tuple[float, ...], list[str]] = {}
    for source, values in sources.items():
        if values:
            series.setdefault(tuple(values), []).append(source)
    for index, (points, named) in enumerate(series.items()):
        label = name if index == 0 else " " * len(name)
        yield (
            f"  {label}: {plural(len(points), 'point')}, first {points[0]:.6g}, last {points[-1]:.6g} "
            f"({', '.join(named)})"
        )
    if not series:
        yield f"  {name}: no values"


def _facts(value: dict[str, Any], indent: str) -> Iterator[str]:
    """A rung's facts, readable: nested objects as indented ``key: value`` lines, lists of plain
    values on one line, lists of objects as ``-`` items, long text wrapped at word boundaries."""
    for key, item in value.items():
        if isinstance(item, dict) and item:
            yield f"{indent}{key}:"
            yield from _facts(item, indent + "  ")
        elif isinstance(item, list) and any(isinstance(x, dict | list) for x in item):
            yield f"{indent}{key}:"
            for element in item:
                lines = list(_facts(element, indent + "    ")) if isinstance(element, dict) else []
                if lines:  # the first key on the dash's line
                    yield f"{indent}  - {lines[0].lstrip()}"
                    yield from lines[1:]
                else:
                    yield from wrapped(_plain(element), f"{indent}  - ", indent + "    ")
        else:
            yield from wrapped(_plain(item), f"{indent}{key}: ", indent + "  ")


def _plain(value: Any) -> str:
    """A fact's value as text: a list as its items, nothing as ``-``, never a Python literal."""
    if isinstance(value, list):
        return ", ".join(_plain(x) for x in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items()) or "-"
    return "-" if value is None else str(value)
