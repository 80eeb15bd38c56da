"""The command line's arguments: the parser, the flags a rung takes, and the checks made before anything runs."""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from harness import __version__
from harness.backends import backend_class, check_rung_names, rungs
from harness.errors import UsageError
from harness.judge.protocol import Tolerance
from harness.ladder.climbing import DEFAULT_RUNGS
from harness.spec.job_files import load_spec
from harness.spec.request import load_request
from harness.spec.workload import Workload


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


#: What ``harness --help`` says first.
DESCRIPTION = """``harness``: the command line. Exit codes: 0 parity (or success), 1 divergence or failure
found, 2 bad usage or input, 130 interrupted. Documented in docs/cli.md."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harness", description=DESCRIPTION)
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


def job_from_args(args: argparse.Namespace) -> Workload:
    if args.from_request and args.job:
        raise UsageError("give a job file or --from-request, not both", hint="docs/cli.md: where a job comes from")
    if args.from_airflow or args.task or args.logical_date:
        from harness.airflow import job_from_dag

        if args.job or args.from_request or not args.from_airflow or not args.task:
            raise UsageError(
                "--from-airflow DAG_FILE --task TASK_ID, without a job file or --from-request",
                hint="docs/airflow.md: a job from a DAG's training task",
            )
        return job_from_dag(args.from_airflow, args.task, logical_date=args.logical_date, source_dir=args.source_dir)
    if args.from_request:
        return load_request(args.from_request, source_dir=args.source_dir)
    if args.job is None:
        raise UsageError("no job given", hint="pass a job file, e.g. scenarios/ddp_csv/job.yaml")
    return load_spec(args.job)


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
            raise UsageError(
                f"{flag} does not apply here: " + "; ".join(_why_not(name, setting) for name in others),
                hint=f"drop {flag}, or add a rung that takes it to --rungs",
            )
        if others:
            print(
                f"harness: {flag} applies to {', '.join(takers)} only: "
                + "; ".join(_why_not(name, setting) for name in others),
                file=sys.stderr,
            )
        for name in takers:
            settings[name][setting] = value
    return settings


def writable_dir(path: Path, flag: str) -> None:
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
    writable_dir(parent, flag)


def report_files(args: argparse.Namespace) -> None:
    for flag in ("json", "html", "markdown"):
        _writable_file(getattr(args, flag), f"--{flag}")
