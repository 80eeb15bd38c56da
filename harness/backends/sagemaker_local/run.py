"""Running the ``sagemaker-local`` rung: the SDK's ``train()`` in a thread, under the harness's clock.

The SDK blocks in ``ModelTrainer.train()`` until compose exits and keeps no handle on compose or
its containers, so the harness runs it in a thread and watches the containers by their compose
project: it streams each host's log as its container appears, and at ``max_run`` or on a signal
(Ctrl-C, SIGTERM, SIGHUP: meanwhile only a flag, :mod:`harness.runtime.interrupts`) stops the containers
as ``docker stop`` does and then compose itself. Afterwards it removes what the SDK leaves (it
never runs ``down``), whatever the outcome.

Before the SDK starts, the container root is prepared so that evidence the SDK deletes on
success survives, and the image is re-tagged with the run's labels so that the SDK's unlabelled
containers carry them (:func:`harness.backends.containers.gc` finds what a killed harness left).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from docker import DockerClient
from docker.errors import APIError, BuildError, DockerException
from docker.models.containers import Container

from harness.backends import sdk_installs
from harness.backends.base import Progress
from harness.backends.containers import (
    LOG_DRAIN_S,
    RUN_ID,
    RUN_IMAGE_PREFIX,
    pump_logs,
    quietly,
    shielded,
    stop,
    teardown,
)
from harness.backends.hosts import copy_source
from harness.backends.sagemaker_local.plan import SdkPlan, compose_project, sdk_environment
from harness.backends.sagemaker_sdk import (
    PROBE_CHANNEL,
    RECORD_CHANNEL,
    model_trainer,
    sdk_configs,
    sdk_input_data,
    write_probe_channel,
)
from harness.errors import ImageError
from harness.record.run_record import RecordWriter
from harness.runtime import interrupts, requirements


def prepare(plan: SdkPlan) -> None:
    """The code copy, the probe channels and each host's ``input``/``output`` kept out of the SDK's
    reach: ``<root>/<host>/{input,output}`` are links into ``_harness/hosts/<host>`` (the SDK's
    ``rmtree`` on success removes the links, not what they point to)."""
    job, work, ours = plan.job, plan.work_dir, plan.ours
    copy_source(job, ours / "code")
    write_probe_channel(ours / PROBE_CHANNEL)
    (ours / RECORD_CHANNEL).mkdir()
    for host in job.hosts:
        for sub in ("input", "output"):
            (ours / "hosts" / host / sub).mkdir(parents=True)
            (work / host).mkdir(parents=True, exist_ok=True)
            (work / host / sub).symlink_to(ours / "hosts" / host / sub, target_is_directory=True)


def local_model_trainer(plan: SdkPlan, image: str) -> Any:
    """Local mode: the code copy, the probe's two channels, the SDK's container root in ``work_dir``."""
    from sagemaker.train.model_trainer import Mode

    configs = sdk_configs()

    job, ours = plan.job, plan.ours
    channels = sdk_input_data(job)
    channels += [
        configs.InputData(channel_name=name, data_source=str(ours / name))
        for name in (PROBE_CHANNEL, RECORD_CHANNEL, *sdk_installs.sdk_channels(job))
    ]
    return model_trainer(
        job,
        training_mode=Mode.LOCAL_CONTAINER,
        training_image=image,
        source_code=configs.SourceCode(
            source_dir=str(ours / "code"), entry_script=job.entry_point, requirements=requirements.sdk_requirements(job)
        ),
        compute=configs.Compute(instance_type=plan.instance_type, instance_count=job.instance_count),
        environment=sdk_environment(job),
        input_data_config=channels,
        local_container_root=str(plan.work_dir),
    )


def labelled_image(client: DockerClient, image: str, labels: dict[str, str]) -> str:
    """A tag of ``image`` carrying the run's labels (no layer added), so the SDK's containers do.

    The labels are one ``LABEL`` line: the build's ``labels=`` adds a line, and with the engine's
    legacy builder an intermediate image, per label, and those stayed behind as dangling images."""
    tag = f"{RUN_IMAGE_PREFIX}{labels[RUN_ID][-120:]}"
    dockerfile = f"FROM {image}\nLABEL " + " ".join(f"{k}={json.dumps(v)}" for k, v in labels.items()) + "\n"
    try:
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, pull=False)
    except (BuildError, APIError) as exc:
        raise ImageError(
            f"cannot tag {image} with the run's labels: {exc}",
            hint="check that the Docker engine runs and has the image (`docker image ls`); "
            "`harness gc` clears what crashed runs left",
        ) from exc
    return tag


class ThreadStdout:
    """``sys.stdout`` for one run: what the SDK's thread prints (compose's output) goes to a file,
    every other thread's output where it went before."""

    def __init__(self, original: TextIO) -> None:
        self.original = original
        self.sinks: dict[int, TextIO] = {}

    @classmethod
    def install(cls) -> ThreadStdout:
        proxy = cls(sys.stdout)
        sys.stdout = proxy
        return proxy

    def uninstall(self) -> None:
        if sys.stdout is self:
            sys.stdout = self.original

    def write(self, text: str) -> int:
        return self.sinks.get(threading.get_ident(), self.original).write(text)

    def flush(self) -> None:
        self.sinks.get(threading.get_ident(), self.original).flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)


class SdkRun(threading.Thread):
    """``ModelTrainer.train()`` in a thread, so that the harness keeps the clock and Ctrl-C."""

    def __init__(self, trainer: Any, log_path: Path, stdout: ThreadStdout) -> None:
        super().__init__(name="harness-sagemaker-local", daemon=True)
        self.trainer, self.log_path, self.stdout = trainer, log_path, stdout
        self.error: str | None = None

    def run(self) -> None:
        with self.log_path.open("a", encoding="utf-8", errors="replace") as log:
            self.stdout.sinks[threading.get_ident()] = log
            try:
                self.trainer.train(wait=True, logs=True)
            except BaseException as exc:  # noqa: BLE001 - reported by the rung, never lost in a thread
                self.error = f"{type(exc).__name__}: {exc}"
            finally:
                self.stdout.sinks.pop(threading.get_ident(), None)


def compose_containers(client: DockerClient, project: str) -> dict[str, Container]:
    """The run's containers by host (compose's service label)."""
    found = client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"})
    return {c.labels.get("com.docker.compose.service", c.name): c for c in found}


def supervise(
    sdk: SdkRun, client: DockerClient, plan: SdkPlan, record: RecordWriter, progress: Progress | None, grace_s: float
) -> bool:
    """Stream each host's log as its container appears; stop everything at ``max_run`` or on a
    signal (SIGINT, SIGTERM, SIGHUP), which meanwhile only sets a flag; once everything is
    stopped, :class:`harness.runtime.interrupts.Interrupted` is raised. Returns whether ``max_run`` was reached."""
    try:
        with interrupts.deferred():
            timed_out = _watch(sdk, client, plan, record, progress, grace_s)
    finally:
        interrupts.raise_if_requested()  # also where watching failed as the signal came
    return timed_out


def _watch(
    sdk: SdkRun, client: DockerClient, plan: SdkPlan, record: RecordWriter, progress: Progress | None, grace_s: float
) -> bool:
    project, pumps = plan.project, dict[str, threading.Thread]()
    deadline, timed_out = time.monotonic() + plan.job.max_run, False
    sdk.start()
    try:
        while sdk.is_alive() and not interrupts.requested():
            _start_pumps(client, project, pumps, record, progress)
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.25)
    finally:
        if sdk.is_alive():
            shielded(lambda: _stop_run(client, project, plan.work_dir, sdk, grace_s))
        _start_pumps(client, project, pumps, record, progress)  # a container that came and went
        for pump in pumps.values():
            pump.join(timeout=LOG_DRAIN_S)
    return timed_out


def _start_pumps(
    client: DockerClient,
    project: str,
    pumps: dict[str, threading.Thread],
    record: RecordWriter,
    progress: Progress | None,
) -> None:
    with contextlib.suppress(APIError, DockerException):
        for host, container in compose_containers(client, project).items():
            # A log stream opened on a container compose has created but not started ends at once,
            # empty, and the host's log would stay so: wait until it runs (or ran).
            if host not in pumps and container.status != "created":
                pumps[host] = threading.Thread(
                    target=pump_logs, daemon=True, args=(container, record.host_dir(host) / "log.txt", host, progress)
                )
                pumps[host].start()


def _compose_pids(work: Path) -> list[int]:
    """The run's compose processes (the SDK keeps no handle we can reach): every process whose
    command line names the run's compose file, so also the ``docker-compose`` plugin that the
    ``docker compose`` CLI starts (the work dir's name is the run's own)."""
    compose_file, pids = str(work / "docker-compose.yaml").encode(), []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError):
            if int(proc.name) != os.getpid() and compose_file in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
    return pids


def _stop_run(client: DockerClient, project: str, work: Path, sdk: SdkRun, grace_s: float) -> None:
    """``max_run`` or a signal: stop the containers as ``docker stop`` does, then compose itself
    (which would otherwise go on creating the containers it had not started yet)."""
    stop(list(compose_containers(client, project).values()), grace_s)
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in _compose_pids(work):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
        sdk.join(timeout=5)
        if not sdk.is_alive():
            break
    stop(list(compose_containers(client, project).values()), 0)  # what compose created meanwhile


def cleanup(client: DockerClient, labels: dict[str, str], run_image: str, work: Path, network: str) -> None:
    """The containers the SDK leaves (by label, and by compose project should a label be missing),
    the run's network (the SDK's shared one only when no container uses it any more), the run's
    image tag, the work dir."""
    for pid in _compose_pids(work):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for container in compose_containers(client, compose_project(work)).values():
        quietly(functools.partial(container.remove, force=True, v=True))
    teardown(client, labels, run_image, work)  # also the run's own network, by its labels
    with contextlib.suppress(APIError, DockerException):
        for found in client.networks.list(names=[network]):  # a name filter matches parts of names
            found.reload()
            if found.name == network and not found.attrs.get("Containers"):
                quietly(found.remove)
    if run_image:
        quietly(lambda: client.images.remove(run_image, noprune=False))
