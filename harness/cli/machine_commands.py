"""``harness doctor``, ``gc``, ``image`` and ``localstack``: the commands about this machine."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from harness.backends import backend_class, get_backend, rungs
from harness.cli.console import emit
from harness.errors import HarnessError
from harness.spec.job import JobSpec


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
                emit(f"{rung:16} unavailable: {exc.message}")
                continue
            state = "ready" if reason is None else f"unavailable: {reason}"
            emit(f"{rung:16} {state} [{backend.capabilities.describe()}]")
            if reason is None:
                try:
                    facts = backend.plan(sample).facts
                except HarnessError:  # a rung of another package that cannot plan such a job
                    continue
                for key in ("network", "toolkit", "launcher"):
                    if facts.get(key):
                        emit(f"{'':16}   {key}: {facts[key]}")
    from harness.runtime import localstack
    from harness.spec import s3

    missing = s3.missing_reason()
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
    emit(f"{'s3':16} {'ready (' + endpoint + ')' if missing is None else 'unavailable: ' + missing}")
    running = localstack.current()
    emit(f"{'localstack':16} " + (f"up at {running.endpoint}" if running else "not running (harness localstack up)"))
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    """What runs whose harness is gone left, as each rung collects its own leftovers
    (:meth:`harness.backends.base.Backend.leftover_collectors`), each collector once. Container
    rungs first: a run's containers write into its work dir (sagemaker-local mounts it), and a dir
    removed under a live writer comes back."""
    classes = []
    for rung in rungs():
        try:
            classes.append(backend_class(rung))
        except HarnessError:  # a rung of a package that cannot be loaded leaves nothing of ours
            continue
    collectors: list[Callable[[], list[str]]] = []
    for cls in sorted(classes, key=lambda cls: not cls.capabilities.containers):
        collectors += [collector for collector in cls.leftover_collectors() if collector not in collectors]
    removed = [line for collector in collectors for line in collector()]
    emit("\n".join(removed) if removed else "nothing to remove")
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    from harness.backends import containers
    from harness.runtime import images

    emit(images.bootstrap_base_image(containers.client()))
    return 0


def cmd_localstack(args: argparse.Namespace) -> int:
    """Exports go to stdout, so that ``eval "$(harness localstack up)"`` works; the rest to stderr."""
    from harness.runtime import localstack

    if args.action == "down":
        emit("stopped" if localstack.down() else "no LocalStack of the harness was running", err=True)
        return 0
    running = localstack.up(args.port, python=args.python) if args.action == "up" else localstack.current()
    if running is None:
        emit("no LocalStack of the harness is running; start it with `harness localstack up`", err=True)
        return 1
    if args.action == "status":
        emit(f"LocalStack up at {running.endpoint} (pid {running.pid})")
    else:
        emit(localstack.shell_exports(running))
        emit(
            f'LocalStack up at {running.endpoint}; point your shell at it with: eval "$(harness localstack env)"',
            err=True,
        )
    return 0
