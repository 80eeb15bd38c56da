"""``harness``: the command line. Exit codes: 0 parity (or success), 1 divergence or failure
found, 2 bad usage or input, 130 interrupted. Documented in docs/cli.md."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from harness import __version__, interrupts
from harness.backends import backend_class, check_rung_names, get_backend, rungs
from harness.backends.base import Backend, Progress
from harness.diff.protocol import Tolerance
from harness.errors import HarnessError, UsageError
from harness.interrupts import Interrupted
from harness.jobspec import JobSpec, load_job
from harness.ladder import DEFAULT_RUNGS, climb
from harness.record import RunRecord
from harness.report import comparison_warnings, to_html, to_json, to_markdown, to_text
from harness.request import load_request
from harness.verdict import Verdict, judge


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse exits 2 too; keep our one-line format
        raise UsageError(message, hint=f"see `{self.prog} --help`")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harness", description=__doc__)
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def job_args(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("job", nargs="?", type=Path, help="job file (YAML)")
        sub.add_argument(
            "--from-request",
            type=Path,
            metavar="JSON",
            help="a boto3 create_training_job request instead of a job file",
        )
        sub.add_argument("--source-dir", type=Path, help="local code for a request whose code is on S3")
        sub.add_argument("--records", type=Path, default=Path("runs"), help="where run records go (default: runs/)")
        sub.add_argument("--shm-size", help="docker rung: /dev/shm size (default mirrors SageMaker)")
        sub.add_argument("--image", help="container rungs: the image to run a script on (default: the job's image, "
                                         "else a python3 + torch image the harness builds)")
        sub.add_argument(
            "--hang-after",
            dest="hang_after_s",
            type=float,
            metavar="SECONDS",
            help="stop a job whose ranks make no progress this long, after dumping their stacks (default 300)",
        )
        sub.add_argument("-v", "--verbose", action="store_true", help="stream every log line")

    def tolerance_args(sub: argparse.ArgumentParser) -> None:
        default = Tolerance()
        sub.add_argument("--rtol", dest="metric_rtol", type=float, default=default.metric_rtol,
                         help="relative tolerance of metric curves (default %(default)s)")
        sub.add_argument("--atol", dest="metric_atol", type=float, default=default.metric_atol,
                         help="absolute tolerance of metric curves (default %(default)s)")
        sub.add_argument("--tensor-rtol", type=float, default=default.tensor_rtol,
                         help="relative tolerance of checkpoint tensors, element by element (default %(default)s)")
        sub.add_argument("--tensor-atol", type=float, default=default.tensor_atol,
                         help="absolute tolerance of checkpoint tensors, element by element (default %(default)s)")
        sub.add_argument("--json", type=Path, metavar="FILE", help="also write the JSON report here")
        sub.add_argument("--html", type=Path, metavar="FILE", help="also write a self-contained HTML report here")
        sub.add_argument("--markdown", type=Path, metavar="FILE", help="also write a Markdown summary (PR comment)")

    run = commands.add_parser("run", help="run a job on one rung and keep its record")
    job_args(run)
    run.add_argument("--rung", default="local", choices=list(rungs()))
    run.add_argument("--dry-run", action="store_true", help="print what would run, start nothing")

    ladder = commands.add_parser("ladder", help="run a job up the ladder and give the verdict")
    job_args(ladder)
    ladder.add_argument("--require", metavar="RUNGS",
                        help="comma-separated rungs that must run: exit 1, before anything runs, if one cannot")
    ladder.add_argument("--rungs", help=f"comma-separated rungs (default: {','.join(DEFAULT_RUNGS)})")
    tolerance_args(ladder)

    diff = commands.add_parser("diff", help="compare two run records")
    diff.add_argument("baseline", type=Path)
    diff.add_argument("candidate", type=Path)
    tolerance_args(diff)

    show = commands.add_parser("show", help="summarise a run record")
    show.add_argument("record", type=Path)

    commands.add_parser("doctor", help="which rungs can run here, and why not")
    commands.add_parser("gc", help="remove containers and networks left by crashed runs")
    image = commands.add_parser("image", help="container images without a registry")
    image.add_argument("action", choices=["bootstrap"])
    localstack = commands.add_parser("localstack", help="S3 and CloudWatch Logs on this machine, for s3:// channels")
    localstack.add_argument("action", choices=["up", "env", "status", "down"],
                            help="up: install if needed, start, print exports; env: print exports; down: stop")
    localstack.add_argument("--port", type=int, default=4566, help="loopback port (default 4566)")
    localstack.add_argument("--python", help="a Python >= 3.13 to install LocalStack with (default: found)")
    return parser


def _job(args: argparse.Namespace) -> JobSpec:
    if args.from_request and args.job:
        raise UsageError("give a job file or --from-request, not both")
    if args.from_request:
        return load_request(args.from_request, source_dir=args.source_dir)
    if args.job is None:
        raise UsageError("no job given", hint="pass a job file, e.g. scenarios/ddp_csv/job.yaml")
    return load_job(args.job)


#: Command-line flags that set a rung setting: each applies to the rungs that declare the setting.
FLAG_SETTINGS = {"--shm-size": "shm_size", "--image": "image", "--hang-after": "hang_after_s"}


def _why_not(rung: str, setting: str) -> str:
    cls = backend_class(rung)
    if setting == "hang_after_s" and not cls.capabilities.hang_detection:
        return f"{rung} has no hang detection (a stuck job runs until max_run)"
    return f"{rung} has no setting {setting!r} (its settings: {', '.join(cls.Options.model_fields) or 'none'})"


def rung_settings(args: argparse.Namespace, names: list[str]) -> dict[str, dict[str, Any]]:
    """Each rung's settings from the command line, through the settings each rung declares. A flag
    that no chosen rung takes is a usage error; one that only some take is said, not dropped."""
    check_rung_names(names)
    settings: dict[str, dict[str, Any]] = {name: {} for name in names}
    for flag, setting in FLAG_SETTINGS.items():
        value = getattr(args, setting)
        if value is None:
            continue
        takers = [name for name in names if setting in backend_class(name).Options.model_fields]
        others = [name for name in names if name not in takers]
        if not takers:
            raise UsageError(f"{flag} does not apply here: " + "; ".join(_why_not(name, setting) for name in others))
        if others:
            print(f"harness: {flag} applies to {', '.join(takers)} only: "
                  + "; ".join(_why_not(name, setting) for name in others), file=sys.stderr)
        for name in takers:
            settings[name][setting] = value
    return settings


class _ProgressLine:
    """One status line on a terminal (elapsed time and the last line a host printed)."""

    def __init__(self, rung: str, verbose: bool) -> None:
        self.rung, self.verbose, self.start = rung, verbose, time.monotonic()
        self.tty = sys.stderr.isatty()

    def __call__(self, host: str, line: str) -> None:
        if self.verbose:
            print(f"[{self.rung} {host}] {line}", file=sys.stderr)
        elif self.tty:
            text = f"[{self.rung} {time.monotonic() - self.start:6.1f}s] {host}: {line}"
            print(f"\r\x1b[K{text[:150]}", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.tty and not self.verbose:
            print("\r\x1b[K", end="", file=sys.stderr, flush=True)


def _run_rung(job: JobSpec, backend: Backend[Any], args: argparse.Namespace) -> RunRecord:
    rung = backend.name
    progress = _ProgressLine(rung, args.verbose)
    callback: Progress = progress
    try:
        record = backend.run(job, args.records, progress=callback)
    finally:
        progress.done()
    print(f"{rung}: {record.status} ({record.root})")
    return record


def cmd_run(args: argparse.Namespace) -> int:
    job = _job(args)
    backend = get_backend(args.rung, **rung_settings(args, [args.rung])[args.rung])
    if args.dry_run:  # needs no engine, SDK or credentials: nothing is started
        job.check_local_paths(f"job {job.name!r}")
        print(backend.plan(job).describe())
        return 0
    return 0 if _run_rung(job, backend, args).status == "succeeded" else 1


def _report(verdict: Verdict, args: argparse.Namespace) -> int:
    print(to_text(verdict))
    for path, render in ((args.json, to_json), (args.html, to_html), (args.markdown, to_markdown)):
        if path is not None:
            path.write_text(render(verdict, at=path) + "\n", encoding="utf-8")  # records relative to the file
    return verdict.exit_code


def cmd_ladder(args: argparse.Namespace) -> int:
    job = _job(args)
    names = [name.strip() for name in args.rungs.split(",")] if args.rungs else list(DEFAULT_RUNGS)
    settings = rung_settings(args, names)
    lines: dict[str, _ProgressLine] = {}

    def progress(rung: str) -> Progress:
        lines[rung] = _ProgressLine(rung, args.verbose)
        return lines[rung]

    def done(record: RunRecord) -> None:
        lines[record.rung].done()
        print(f"{record.rung}: {record.status} ({record.root})")

    result = climb(
        job,
        args.records,
        rungs=names,
        tolerance=Tolerance(args.metric_rtol, args.metric_atol, args.tensor_rtol, args.tensor_atol),
        options=settings.__getitem__,
        progress=progress,
        on_record=done,
        require=[name.strip() for name in args.require.split(",")] if args.require else (),
    )
    return _report(result.verdict, args)


def cmd_diff(args: argparse.Namespace) -> int:
    records = [RunRecord.load(args.baseline), RunRecord.load(args.candidate)]
    for warning in comparison_warnings(records):  # another job or topology: compared all the same, but said
        print(f"harness: warning: {warning}", file=sys.stderr)
    tolerance = Tolerance(args.metric_rtol, args.metric_atol, args.tensor_rtol, args.tensor_atol)
    return _report(judge(records, tolerance=tolerance), args)


def cmd_show(args: argparse.Namespace) -> int:
    record = RunRecord.load(args.record)
    m = record.manifest
    complete = "" if m["complete"] else "  (INCOMPLETE: the run was cut off)"
    print(f"{m['run_id']}: {m['job']['name']} on {m['rung']}: {m['status']}{complete}")
    print(f"  started {m['started_at']}, ended {m['ended_at']}; harness {m['harness_version']}")
    topology = m["topology"]
    print(
        f"  {len(topology['hosts'])} hosts x {topology['processes_per_host']} processes "
        f"({topology['distribution']}, {topology['launcher']} launcher)"
    )
    for host, result in m["hosts"].items():
        print(
            f"  {host}: exit {result.get('exit_code')}"
            + (f": {result['failure_reason'][:120]}" if result.get("failure_reason") else "")
        )
    for name, sources in record.metrics().items():
        for source, values in sources.items():
            if values:
                print(f"  {name} [{source}]: {len(values)} points, first {values[0]:g}, last {values[-1]:g}")
    for archive, uri in (m.get("uploaded") or {}).items():
        print(f"  uploaded {archive}: {uri}")
    if m.get("checkpoints"):
        clashes = m["checkpoints"]["clashes"]
        print(f"  checkpoints: {len(m['checkpoints']['files'])} files synced to {m['checkpoints']['s3_uri']}"
              + (f", {len(clashes)} written by several hosts" if clashes else ""))
    for key, value in m["rung_facts"].items():
        print(f"  fact {key}: {value}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    for rung in rungs():
        try:
            backend = get_backend(rung)
            reason = backend.unavailable_reason()
        except HarnessError as exc:
            print(f"{rung:16} unavailable: {exc.message}")
            continue
        print(f"{rung:16} {'ready' if reason is None else 'unavailable: ' + reason}"
              f" [{backend.capabilities.describe()}]")
    from harness import localstack, s3

    missing = s3.missing_reason()
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
    print(f"{'s3':16} {'ready (' + endpoint + ')' if missing is None else 'unavailable: ' + missing}")
    running = localstack.current()
    print(f"{'localstack':16} " + (f"up at {running.endpoint}" if running else "not running (harness localstack up)"))
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    """What runs whose harness is gone left: local processes and work dirs, and, where an engine
    answers, labelled containers and networks."""
    from harness.backends import containers, orphans

    removed = orphans.gc()
    if containers.engine_unavailable_reason() is None:
        removed += containers.gc(containers.client())
    print("\n".join(removed) if removed else "nothing to remove")
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    from harness import images
    from harness.backends import containers

    print(images.bootstrap_base_image(containers.client()))
    return 0


def cmd_localstack(args: argparse.Namespace) -> int:
    """Exports go to stdout, so that ``eval "$(harness localstack up)"`` works; the rest to stderr."""
    from harness import localstack

    if args.action == "down":
        print("stopped" if localstack.down() else "no LocalStack of the harness was running", file=sys.stderr)
        return 0
    running = localstack.up(args.port, python=args.python) if args.action == "up" else localstack.current()
    if running is None:
        print("no LocalStack of the harness is running; start it with `harness localstack up`", file=sys.stderr)
        return 1
    if args.action == "status":
        print(f"LocalStack up at {running.endpoint} (pid {running.pid})")
    else:
        print(localstack.shell_exports(running))
        print(f"LocalStack up at {running.endpoint}; point your shell at it with: "
              f'eval "$(harness localstack env)"', file=sys.stderr)
    return 0


COMMANDS = {
    "run": cmd_run,
    "ladder": cmd_ladder,
    "diff": cmd_diff,
    "show": cmd_show,
    "doctor": cmd_doctor,
    "gc": cmd_gc,
    "image": cmd_image,
    "localstack": cmd_localstack,
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        with interrupts.stopping_on_signals():
            args = _parser().parse_args(argv)
            return COMMANDS[args.command](args)
    except HarnessError as exc:
        print(f"harness: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        what = exc.args[0] if isinstance(exc, Interrupted) else "Ctrl-C"
        print(f"harness: stopped by {what}; every process and container was stopped and the record marked "
              "interrupted", file=sys.stderr)
        return exc.exit_code if isinstance(exc, Interrupted) else 130


if __name__ == "__main__":
    sys.exit(main())
