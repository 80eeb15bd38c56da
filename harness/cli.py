"""``harness``: the command line. Exit codes: 0 parity (or success), 1 divergence or failure
found, 2 bad usage or input, 130 interrupted. Documented in docs/cli.md.

Every error a user can cause is one line on stderr (``harness: error: ...``) and a hint, never
a traceback: a :class:`HarnessError` raised anywhere, a refused file system operation, a reader
that closed the pipe (``harness show R | head``: the rest of the output is dropped, the command
ends as it would have).
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import re
import signal
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from harness import __version__, interrupts
from harness.backends import backend_class, check_rung_names, get_backend, parse_rung_list, rungs
from harness.backends.base import Backend, Progress
from harness.diff import logs
from harness.diff.protocol import CheckContext, Tolerance
from harness.errors import HarnessError, UsageError
from harness.interrupts import Interrupted
from harness.jobspec import JobSpec, load_job
from harness.ladder import DEFAULT_RUNGS, climb
from harness.record import RunRecord
from harness.report import comparison_warnings, to_html, to_json, to_markdown, to_text
from harness.request import load_request
from harness.verdict import Verdict, judge

# ---- output: a reader that goes away (`| head`) is not an error -----------------------------------


def _emit(text: str = "", *, err: bool = False, end: str = "\n") -> None:
    """``text`` on stdout (or stderr), flushed (a CI log shows it at once). When the reader has
    closed the pipe, the rest of the output goes nowhere and the command carries on."""
    stream = sys.stderr if err else sys.stdout
    try:
        stream.write(text + end)
        stream.flush()
    except BrokenPipeError:
        _drop(stream)


def _drop(stream: IO[str]) -> None:
    """Point ``stream`` at /dev/null (the recipe of the Python docs for SIGPIPE): what is still
    buffered, and everything written later, is discarded without another BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (a test's capture): nothing to redirect
        pass


# ---- arguments ----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse exits 2 too; keep our one-line format
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            options = re.findall(r"'([^']*)'", choice[2]) or choice[2].split(", ")
            close = difflib.get_close_matches(choice[1], options, n=1)
            if close:
                raise UsageError(message, hint=f"did you mean {close[0]!r}?")
        raise UsageError(message, hint=f"see `{self.prog} --help`")


def _number(text: str) -> float:
    """``text`` as a float; anything that is not a finite number as NaN, which every bound refuses."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _tolerance(text: str) -> float:
    """A tolerance: a finite number >= 0 (``|a - b| <= atol + rtol * |a|``)."""
    value = _number(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"a tolerance is a number >= 0, got {text!r}")
    return value


def _seconds(text: str) -> float:
    """A duration: a finite number of seconds > 0."""
    value = _number(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a TCP port (1 to 65535), got {text!r}")
    return int(text)


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
        sub.add_argument(
            "--from-airflow",
            type=Path,
            metavar="DAG_FILE",
            help="an Airflow DAG file: the request its --task sends (docs/airflow.md)",
        )
        sub.add_argument("--task", metavar="TASK_ID", help="with --from-airflow: the training task (or DAG_ID/TASK_ID)")
        sub.add_argument(
            "--logical-date", metavar="ISO", help="with --from-airflow: render templates for this date (default: now)"
        )
        sub.add_argument("--source-dir", type=Path, help="local code for a request whose code is on S3")
        sub.add_argument("--records", type=Path, default=Path("runs"), help="where run records go (default: runs/)")
        sub.add_argument("--shm-size", help="docker rung: /dev/shm size (default mirrors SageMaker)")
        sub.add_argument(
            "--image",
            help="container rungs: the image to run a script on (default: the job's image, "
            "else a python3 + torch image the harness builds)",
        )
        sub.add_argument(
            "--hang-after",
            dest="hang_after_s",
            type=_seconds,
            metavar="SECONDS",
            help="stop a job whose ranks make no progress this long, after dumping their stacks (default 300)",
        )
        sub.add_argument("-v", "--verbose", action="store_true", help="stream every log line")

    def tolerance_args(sub: argparse.ArgumentParser) -> None:
        default = Tolerance()
        sub.add_argument(
            "--rtol",
            dest="metric_rtol",
            type=_tolerance,
            default=default.metric_rtol,
            help="relative tolerance of metric curves (default %(default)s)",
        )
        sub.add_argument(
            "--atol",
            dest="metric_atol",
            type=_tolerance,
            default=default.metric_atol,
            help="absolute tolerance of metric curves (default %(default)s)",
        )
        sub.add_argument(
            "--tensor-rtol",
            type=_tolerance,
            default=default.tensor_rtol,
            help="relative tolerance of checkpoint tensors, element by element (default %(default)s)",
        )
        sub.add_argument(
            "--tensor-atol",
            type=_tolerance,
            default=default.tensor_atol,
            help="absolute tolerance of checkpoint tensors, element by element (default %(default)s)",
        )
        sub.add_argument("--json", type=Path, metavar="FILE", help="also write the JSON report here")
        sub.add_argument("--html", type=Path, metavar="FILE", help="also write a self-contained HTML report here")
        sub.add_argument("--markdown", type=Path, metavar="FILE", help="also write a Markdown summary (PR comment)")

    run = commands.add_parser("run", help="run a job on one rung and keep its record")
    job_args(run)
    run.add_argument("--rung", default="local", choices=list(rungs()))
    run.add_argument("--dry-run", action="store_true", help="print what would run, start nothing")

    ladder = commands.add_parser("ladder", help="run a job up the ladder and give the verdict")
    job_args(ladder)
    ladder.add_argument(
        "--require",
        metavar="RUNGS",
        help="comma-separated rungs that must run: exit 1, before anything runs, if one cannot",
    )
    ladder.add_argument("--rungs", help=f"comma-separated rungs (default: {','.join(DEFAULT_RUNGS)})")
    ladder.add_argument(
        "--keep-going", action="store_true", help="climb every rung even after one has departed (default: stop there)"
    )
    tolerance_args(ladder)

    bisect = commands.add_parser("bisect", help="name the one difference between two rungs that makes a job depart")
    job_args(bisect)
    bisect.add_argument(
        "--between",
        default="local,docker",
        metavar="LOWER,UPPER",
        help="the rung the job agrees on and the one it departs on (default: local,docker)",
    )
    bisect.add_argument("--max-runs", type=int, default=16, help="stop the search after this many runs (default 16)")
    bisect.add_argument("--json", type=Path, metavar="FILE", help="also write the steps as JSON here")

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
    localstack.add_argument(
        "action",
        choices=["up", "env", "status", "down"],
        help="up: install if needed, start, print exports; env: print exports; down: stop",
    )
    localstack.add_argument("--port", type=_port, default=4566, help="loopback port (default 4566)")
    localstack.add_argument("--python", help="a Python >= 3.13 to install LocalStack with (default: found)")
    return parser


def _job(args: argparse.Namespace) -> JobSpec:
    if args.from_request and args.job:
        raise UsageError("give a job file or --from-request, not both")
    if args.from_airflow or args.task or args.logical_date:
        from harness.airflow import job_from_dag

        if args.job or args.from_request or not args.from_airflow or not args.task:
            raise UsageError("--from-airflow DAG_FILE --task TASK_ID, without a job file or --from-request")
        return job_from_dag(args.from_airflow, args.task, logical_date=args.logical_date, source_dir=args.source_dir)
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
            print(
                f"harness: {flag} applies to {', '.join(takers)} only: "
                + "; ".join(_why_not(name, setting) for name in others),
                file=sys.stderr,
            )
        for name in takers:
            settings[name][setting] = value
    return settings


# ---- checks before anything runs ----------------------------------------------------------------


def _writable_dir(path: Path, flag: str) -> None:
    """Refuse, before anything runs, a directory the harness could not create or write into: one
    under a regular file, on a read-only file system, or without permission."""
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(
            f"{flag} {path}: {existing} is a file, not a directory",
            hint=f"give {flag} a directory (it is created when missing)",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        why = "is on a read-only file system" if read_only else "is not writable (permission denied)"
        raise UsageError(f"{flag} {path}: {existing} {why}", hint=f"give {flag} a directory you can write to")


def _writable_file(path: Path | None, flag: str) -> None:
    """A report file the harness will write at the end: checked at the start, so that a ladder
    that ran for an hour does not fail at its last step."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{flag} {path}: a directory, not a file", hint=f"give {flag} a file name")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: no directory {parent}", hint="create it first, or choose another path")
    _writable_dir(parent, flag)


def _report_files(args: argparse.Namespace) -> None:
    for flag in ("json", "html", "markdown"):
        _writable_file(getattr(args, flag), f"--{flag}")


# ---- what a rung is doing -------------------------------------------------------------------------


def _progress_every_s() -> float:
    """Seconds between progress lines when stderr is no terminal: ``$HARNESS_PROGRESS_EVERY``
    (default 30; 0 turns them off)."""
    try:
        return max(0.0, float(os.environ.get("HARNESS_PROGRESS_EVERY", "30")))
    except ValueError:
        return 30.0


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 'es' if word.endswith('s') else 's'}"


def _topology(job: JobSpec) -> str:
    return f"{_plural(job.instance_count, 'host')} x {_plural(job.processes_per_host, 'process')}"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class _RungProgress:
    """What a rung is doing, on stderr. Always a line when the rung starts. On a terminal, one
    status line rewritten in place (elapsed time, the last line a host printed); elsewhere (a
    CI log, a file) a line every ``HARNESS_PROGRESS_EVERY`` seconds with the same, and one when
    the rung ends; ``-v`` streams every line the job prints instead."""

    def __init__(self, rung: str, job: JobSpec, verbose: bool) -> None:
        self.rung, self.verbose, self.start = rung, verbose, time.monotonic()
        self.tty = sys.stderr.isatty()
        self.last: tuple[str, str] | None = None
        self.stopped = threading.Event()
        _emit(f"[{rung}] starting: {_topology(job)}", err=True)
        every = _progress_every_s()
        if not self.tty and not verbose and every > 0:
            threading.Thread(target=self._tick, args=(every,), name="harness-progress", daemon=True).start()

    def elapsed(self) -> str:
        return _duration(time.monotonic() - self.start)

    def __call__(self, host: str, line: str) -> None:
        self.last = (host, line)
        if self.verbose:
            _emit(f"[{self.rung} {host}] {line}", err=True)
        elif self.tty:
            text = f"[{self.rung} {time.monotonic() - self.start:6.1f}s] {host}: {line}"
            _emit(f"\r\x1b[K{text[:150]}", err=True, end="")

    def _tick(self, every: float) -> None:
        shown = None
        while not self.stopped.wait(every):
            last = self.last
            said = "no output yet" if last is None else f"{last[0]}: {last[1][:200]}"
            if last is not None and last is shown:
                said = f"no new output; last {said}"
            shown = last
            _emit(f"[{self.rung} {self.elapsed()}] running; {said}", err=True)

    def done(self, status: str | None) -> None:
        """The rung ended with ``status`` (None: it broke off); said once."""
        if self.stopped.is_set():
            return
        self.stopped.set()
        if self.tty and not self.verbose:
            _emit("\r\x1b[K", err=True, end="")
        elif not self.tty:
            _emit(f"[{self.rung}] {status or 'stopped'} after {self.elapsed()}", err=True)


def _run_rung(job: JobSpec, backend: Backend[Any], args: argparse.Namespace) -> RunRecord:
    rung = backend.name
    progress = _RungProgress(rung, backend.job_as_run(job), args.verbose)
    callback: Progress = progress
    status = None
    try:
        record = backend.run(job, args.records, progress=callback)
        status = record.status
    finally:
        progress.done(status)
    _emit(f"{rung}: {record.status} ({record.root})")
    if record.status != "succeeded":
        for line in _why_it_failed(record):
            _emit(line)
    return record


# ---- why a run failed, and where to look ------------------------------------------------------------

_WHERE = re.compile(r"^(?P<source>\S+?):(?P<line>\d+) (?P<stamp>\S*) (?P<text>.*)$")
_ERROR_LINE = re.compile(r"\b\w*(Error|Exception|Interrupt|Exit|Killed|Failure)\b|\berror\b", re.I)
_WIDTH = 100


def _exit_code(code: Any) -> str:
    """An exit code, with the signal a negative one (or one above 128) stands for."""
    if not isinstance(code, int):
        return "none"
    number = -code if code < 0 else code - 128 if code > 128 else 0
    try:
        return f"{code} ({signal.Signals(number).name})" if number else str(code)
    except ValueError:
        return str(code)


def failure_line(reason: str) -> str:
    """The line of a failure reason that says what went wrong: the last that reads as an error
    (an ``ErrorMessage`` of the launcher, an exception), else its last line; never the
    launcher's command or exit code lines."""
    lines = [line.strip().removeprefix("ErrorMessage ").strip('"').strip() for line in reason.splitlines()]
    lines = [
        line
        for line in lines
        if line and not line.startswith(("Command ", "ExitCode ")) and line != "ExecuteUserScriptError:"
    ]
    errors = [line for line in lines if _ERROR_LINE.search(line)]
    return (errors or lines or [reason.strip()])[-1]


def _failing_hosts(record: RunRecord) -> dict[str, dict[str, Any]]:
    return {h: r for h, r in record.manifest["hosts"].items() if r.get("exit_code") not in (0, None)}


def _why_it_failed(record: RunRecord, *, relative: bool = False) -> list[str]:
    """A failed run in a few lines: its first error (the logs check: which rank, which known
    failure, the line), each failing host's exit code, the log files to open (``relative``: to
    the record), the fix hint; last, the command that shows the whole record."""
    lines: list[str] = []
    finding = None
    try:
        finding = next(iter(logs.check_run(record, CheckContext())), None)
    except HarnessError:
        finding = None
    failing = _failing_hosts(record)
    where = _WHERE.match(finding.evidence[0]) if finding and finding.evidence else None
    look: list[str] = []
    if finding is not None:
        lines.append(f"  cause: {finding.title}")
        if where:
            lines += _wrapped(where["text"], "    ")
            look.append(f"{record.root / where['source']}:{where['line']}")  # made relative below
    elif failing:
        host, result = next(iter(failing.items()))
        reason = result.get("failure_reason")
        lines += _wrapped(
            f"{host} exited with {_exit_code(result.get('exit_code'))}"
            + (f": {failure_line(reason)}" if reason else ""),
            "  cause: ",
            "    ",
        )
    elif record.status == "timeout":
        lines.append(f"  cause: the job ran past max_run ({record.manifest['job'].get('max_run')} s) and was stopped")
    if record.status == "hung":
        lines.append("  the job stopped making progress: every rank's stacks were dumped, then it was stopped")
        look += [str(path) for path in record.rank_stacks().values() if path.stat().st_size]
    if record.manifest.get("error"):
        lines += _wrapped(str(record.manifest["error"]), "  harness error: ", "    ")
    if failing:
        lines.append("  exit codes: " + ", ".join(f"{h} {_exit_code(r.get('exit_code'))}" for h, r in failing.items()))
    look += [str(record.host_log(host)) for host in failing or record.hosts if record.host_log(host).is_file()]
    look = [path for path in look if not any(other.startswith(f"{path}:") for other in look)]  # path:line says it
    if relative:
        look = [path.removeprefix(f"{record.root}/") for path in look]
    for index, path in enumerate(dict.fromkeys(look)):
        lines.append(("  logs: " if index == 0 else "        ") + path)
    if finding is not None and finding.hint:
        lines += _wrapped(finding.hint, "  hint: ", "    ")
    lines.append(f"  more: harness show {record.root}")
    return lines


def _wrapped(text: str, first: str, rest: str | None = None) -> list[str]:
    """``text`` wrapped at word boundaries (never cut in a word), the first line after ``first``."""
    return textwrap.wrap(
        text,
        _WIDTH,
        initial_indent=first,
        subsequent_indent=rest if rest is not None else first,
        break_long_words=False,
        break_on_hyphens=False,
    ) or [first.rstrip()]


def cmd_run(args: argparse.Namespace) -> int:
    job = _job(args)
    backend = get_backend(args.rung, **rung_settings(args, [args.rung])[args.rung])
    if args.dry_run:  # needs no engine, SDK or credentials: nothing is started
        job.check_local_paths(f"job {job.name!r}")
        _emit(backend.plan(job).describe())
        return 0
    _writable_dir(args.records, "--records")
    return 0 if _run_rung(job, backend, args).status == "succeeded" else 1


def _report(verdict: Verdict, args: argparse.Namespace) -> int:
    _emit(to_text(verdict))
    for path, render in ((args.json, to_json), (args.html, to_html), (args.markdown, to_markdown)):
        if path is not None:
            path.write_text(render(verdict, at=path) + "\n", encoding="utf-8")  # records relative to the file
    return verdict.exit_code


def cmd_ladder(args: argparse.Namespace) -> int:
    job = _job(args)
    names = parse_rung_list(args.rungs, where="--rungs") if args.rungs is not None else list(DEFAULT_RUNGS)
    required = parse_rung_list(args.require, where="--require") if args.require is not None else []
    settings = rung_settings(args, names)
    _writable_dir(args.records, "--records")
    _report_files(args)
    lines: dict[str, _RungProgress] = {}

    def progress(rung: str) -> Progress:
        lines[rung] = _RungProgress(rung, backend_class(rung).job_as_run(job), args.verbose)
        return lines[rung]

    def done(record: RunRecord) -> None:
        lines[record.rung].done(record.status)
        _emit(f"{record.rung}: {record.status} ({record.root})")

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
    return _report(result.verdict, args)


def cmd_bisect(args: argparse.Namespace) -> int:
    """Exit 0 when a dimension was named, 1 when none (or nothing departs)."""
    from harness import bisect

    job = _job(args)
    lower, _, upper = args.between.partition(",")
    settings = rung_settings(args, [upper])[upper]
    result = bisect.bisect(
        job,
        args.records,
        lower=lower,
        upper=upper,
        upper_options=settings,
        max_runs=args.max_runs,
        on_record=lambda r: _emit(f"{r.rung}: {r.status} ({r.root})"),
    )
    _emit(bisect.to_text(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return 0 if result.dimension else 1


def cmd_diff(args: argparse.Namespace) -> int:
    records = [RunRecord.load(args.baseline, strict=True), RunRecord.load(args.candidate, strict=True)]
    _report_files(args)
    for warning in comparison_warnings(records):  # another job or topology: compared all the same, but said
        _emit(f"harness: warning: {warning}", err=True)
    tolerance = Tolerance(args.metric_rtol, args.metric_atol, args.tensor_rtol, args.tensor_atol)
    return _report(judge(records, tolerance=tolerance), args)


# ---- show -------------------------------------------------------------------------------------------


def cmd_show(args: argparse.Namespace) -> int:
    record = RunRecord.load(args.record, strict=True)
    for line in show_lines(record):
        _emit(line)
    return 0


def show_lines(record: RunRecord) -> Iterator[str]:
    """A record, readable: what ran and how it ended, each host (exit code, the failure's line,
    its log), each rank, each metric once, the artifacts, the rung's facts."""
    m = record.manifest
    yield f"{m['run_id']}: job {m['job']['name']} on {m['rung']}, {m['status']}"
    if not m["complete"]:
        yield "  INCOMPLETE: the run was cut off (the harness stopped before it ended)"
    yield f"  record: {record.root} (file paths below are relative to it; README.md says what each file holds)"
    yield f"  started {m['started_at']}, ended {m['ended_at'] or '-'}{_took(m)}; harness {m['harness_version']}"
    topology = m["topology"]
    yield (
        f"  {_plural(len(topology['hosts']), 'host')} x {_plural(topology['processes_per_host'], 'process')}, "
        f"world size {topology['world_size']} ({topology['distribution']}, {topology['launcher']} launcher)"
    )
    if m["status"] not in ("succeeded", "running"):
        yield from _why_it_failed(record, relative=True)[:-1]  # all but "more: harness show"
    yield "hosts"
    for host in topology["hosts"]:
        result = m["hosts"].get(host, {})
        yield f"  {host}: exit {_exit_code(result.get('exit_code'))}"
        if result.get("failure_reason"):
            by = f" (written by the {result['failure_written_by']})" if result.get("failure_written_by") else ""
            yield f"    failure{by}:"
            yield from _wrapped(failure_line(result["failure_reason"]), "      ")
        if record.host_log(host).is_file():
            yield f"    log: {_relative(record, record.host_log(host))}"
    ranks, logs, stacks = m["ranks"], record.rank_logs(), record.rank_stacks()
    if ranks or logs:
        yield "ranks"
    for rank in sorted({int(r) for r in ranks} | set(logs)):
        info = ranks.get(str(rank), {})
        on = f" on {info['host']}" if info.get("host") else ""
        pid = f" (pid {info['pid']})" if info.get("pid") is not None else ""
        ended = f", ended {info['ended_at']}" if info.get("ended_at") else ""
        source = f" ({info['ended_at_from']})" if ended and info.get("ended_at_from") not in (None, "probe") else ""
        yield f"  rank {rank}{on}{pid}{ended}{source}"
        if info.get("exception"):
            yield from _wrapped(str(info["exception"]), "    exception: ", "      ")
        if rank in logs:
            yield f"    log: {_relative(record, logs[rank])}"
        if rank in stacks and stacks[rank].stat().st_size:
            yield f"    stacks: {_relative(record, stacks[rank])}"
    metrics = record.metrics()
    if metrics:
        yield "metrics"
    for name, sources in metrics.items():
        yield from _metric_lines(name, sources)
    artifacts = m.get("artifacts") or {}
    if artifacts:
        yield "artifacts"
    for archive, info in artifacts.items():
        clashes = info.get("clashes") or {}
        yield (
            f"  {archive}: {_plural(info.get('files', 0), 'file')}"
            + (f", {len(clashes)} written by several hosts: {', '.join(sorted(clashes))}" if clashes else "")
        )
    for archive, uri in (m.get("uploaded") or {}).items():
        yield f"  uploaded {archive}: {uri}"
    if m.get("checkpoints"):
        points = m["checkpoints"]
        clashes = points["clashes"]
        yield (
            f"checkpoints: {_plural(len(points['files']), 'file')} synced to {points['s3_uri']}"
            + (f", {len(clashes)} written by several hosts" if clashes else "")
        )
    if m["rung_facts"]:
        yield "rung facts"
        yield from _facts(m["rung_facts"], "  ")


def _relative(record: RunRecord, path: Path) -> str:
    return path.relative_to(record.root).as_posix()


def _took(manifest: dict[str, Any]) -> str:
    import datetime as dt

    try:
        start = dt.datetime.fromisoformat(manifest["started_at"].replace("Z", "+00:00"))
        end = dt.datetime.fromisoformat(manifest["ended_at"].replace("Z", "+00:00"))
    except (AttributeError, TypeError, ValueError):
        return ""
    return f" (took {_duration((end - start).total_seconds())})"


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
            f"  {label}: {_plural(len(points), 'point')}, first {points[0]:.6g}, last {points[-1]:.6g} "
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
                    yield from _wrapped(_plain(element), f"{indent}  - ", indent + "    ")
        else:
            yield from _wrapped(_plain(item), f"{indent}{key}: ", indent + "  ")


def _plain(value: Any) -> str:
    """A fact's value as text: a list as its items, nothing as ``-``, never a Python literal."""
    if isinstance(value, list):
        return ", ".join(_plain(x) for x in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items()) or "-"
    return "-" if value is None else str(value)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Each rung: ready or why not, what it can do, and for a ready one how like SageMaker it is
    here (its network model and launcher, from the plan of a 2-host torchrun job)."""
    with tempfile.TemporaryDirectory(prefix="harness-doctor-") as scratch:
        (Path(scratch) / "train.py").touch()
        sample = JobSpec(
            name="doctor", source_dir=Path(scratch), entry_point="train.py", instance_count=2, distribution="torchrun"
        )
        for rung in rungs():
            try:
                backend = get_backend(rung)
                reason = backend.unavailable_reason()
            except HarnessError as exc:
                _emit(f"{rung:16} unavailable: {exc.message}")
                continue
            state = "ready" if reason is None else f"unavailable: {reason}"
            _emit(f"{rung:16} {state} [{backend.capabilities.describe()}]")
            if reason is None:
                try:
                    facts = backend.plan(sample).facts
                except HarnessError:  # a rung of another package that cannot plan such a job
                    continue
                for key in ("network", "toolkit", "launcher"):
                    if facts.get(key):
                        _emit(f"{'':16}   {key}: {facts[key]}")
    from harness import localstack, s3

    missing = s3.missing_reason()
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
    _emit(f"{'s3':16} {'ready (' + endpoint + ')' if missing is None else 'unavailable: ' + missing}")
    running = localstack.current()
    _emit(f"{'localstack':16} " + (f"up at {running.endpoint}" if running else "not running (harness localstack up)"))
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    """What runs whose harness is gone left: local processes and work dirs, and, where an engine
    answers, labelled containers and networks."""
    from harness.backends import containers, orphans

    # Containers first: a run's containers write into its work dir (sagemaker-local mounts it),
    # and a dir removed under a live writer comes back.
    removed = containers.gc(containers.client()) if containers.engine_unavailable_reason() is None else []
    removed = orphans.gc() + removed
    _emit("\n".join(removed) if removed else "nothing to remove")
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    from harness import images
    from harness.backends import containers

    _emit(images.bootstrap_base_image(containers.client()))
    return 0


def cmd_localstack(args: argparse.Namespace) -> int:
    """Exports go to stdout, so that ``eval "$(harness localstack up)"`` works; the rest to stderr."""
    from harness import localstack

    if args.action == "down":
        _emit("stopped" if localstack.down() else "no LocalStack of the harness was running", err=True)
        return 0
    running = localstack.up(args.port, python=args.python) if args.action == "up" else localstack.current()
    if running is None:
        _emit("no LocalStack of the harness is running; start it with `harness localstack up`", err=True)
        return 1
    if args.action == "status":
        _emit(f"LocalStack up at {running.endpoint} (pid {running.pid})")
    else:
        _emit(localstack.shell_exports(running))
        _emit(
            f'LocalStack up at {running.endpoint}; point your shell at it with: eval "$(harness localstack env)"',
            err=True,
        )
    return 0


COMMANDS = {
    "run": cmd_run,
    "ladder": cmd_ladder,
    "bisect": cmd_bisect,
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
        _emit(f"harness: error: {exc.message}", err=True)
        if exc.hint:
            _emit(f"hint: {exc.hint}", err=True)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        what = exc.args[0] if isinstance(exc, Interrupted) else "Ctrl-C"
        print(
            f"harness: stopped by {what}; every process and container was stopped and the record marked interrupted",
            file=sys.stderr,
        )
        return exc.exit_code if isinstance(exc, Interrupted) else 130
    except BrokenPipeError:  # output the CLI writes itself never gets here (_emit); argparse's --help may
        _drop(sys.stdout)
        return 0
    except OSError as exc:  # the operating system refused something the checks could not foresee
        if os.environ.get("HARNESS_DEBUG"):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        _emit(f"harness: error: {where}{exc.strerror or exc}", err=True)
        _emit("hint: check the path, its permissions and free space; HARNESS_DEBUG=1 shows the traceback", err=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
