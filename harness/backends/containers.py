"""Docker engine plumbing shared by the container rungs (``docker``, ``sagemaker-local``).

Whether an engine answers and can pass GPUs, which image a job runs in (pulled or built when
missing), labels on everything a run creates (so a ``finally`` and :func:`gc` can find it), log
streaming in the record's timestamped format, ``docker stop`` semantics for many containers at
once, and cleanup that finishes even when Ctrl-C is pressed again.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
from docker import DockerClient
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.types import Mount

from harness.backends.base import Progress
from harness.backends.hosts import collect_failure
from harness.errors import ImageError
from harness.record.run_record import RecordWriter, now, scrub, secret_values
from harness.spec.host_contract import HostContract
from harness.spec.job import JobSpec

MANAGED, RUN_ID, OWNER_PID, OWNER_HOST = "harness.managed", "harness.run_id", "harness.pid", "harness.hostname"
WORK_DIR = "harness.work_dir"
#: Tags of images made for one run only (harness.backends.sagemaker_local.run.labelled_image).
RUN_IMAGE_PREFIX = "harness/sagemaker-local-run:"
PING_TIMEOUT_S = 5


#: Seconds to wait for a stopped container's log stream to be written out. The stream ends when
#: the container has stopped, which it has by then; the bound is for an engine that stops
#: answering. A short one lost the last lines of a loaded machine's runs, and with them the cause.
LOG_DRAIN_S = 60.0


class EngineClient:
    """A Docker client made on first use, so that planning and importing need no engine."""

    _docker: DockerClient | None = None

    def client(self) -> DockerClient:
        if self._docker is None:
            self._docker = client()
        return self._docker


def host_result(job: JobSpec, contract: HostContract, container: Container, tree: Path, record: RecordWriter) -> int:
    """Exit code, failure file and the engine's start and end times of one host."""
    state = container.client.api.inspect_container(container.id)["State"]
    code = int(state["ExitCode"])
    collect_failure(job, contract, tree, record, code, millis(state["StartedAt"]), millis(state["FinishedAt"]))
    record.host_result(contract.host, oom_killed=bool(state.get("OOMKilled")))
    return code


def client() -> DockerClient:
    """A client for the engine ``DOCKER_HOST`` names, else the default socket (``harness gc`` uses it)."""
    return docker.from_env()


def engine_unavailable_reason(client: DockerClient | None = None, *, gpus: bool = False) -> str | None:
    """Why no Docker engine answers (``client``'s, else ``DOCKER_HOST``'s or the default socket's),
    or, with ``gpus``, why it cannot pass NVIDIA GPUs; None when it can run the rung.

    Without a client it pings with a short-timeout client of its own, so that a dead
    ``DOCKER_HOST`` never hangs the ladder."""
    try:
        engine = client or docker.from_env(timeout=PING_TIMEOUT_S)
        engine.ping()
    except (DockerException, OSError) as exc:
        cause = re.search(
            r"Connection refused|No such file or directory|Permission denied|timed out|"
            r"Network is unreachable",
            str(exc),
        )
        where = os.environ.get("DOCKER_HOST", "the default socket")
        return (
            f"no Docker engine answers at {where} ({cause.group(0) if cause else type(exc).__name__}); "
            "start dockerd, join the docker group or set DOCKER_HOST"
        )
    if gpus and not engine_gpus(lambda: engine):
        return "gpus=True, but this machine has no NVIDIA GPU or the engine has no NVIDIA runtime"
    return None


@functools.cache
def host_gpu_count() -> int:
    """NVIDIA GPUs here, counted as the toolkit counts them (``nvidia-smi --list-gpus``)."""
    try:
        out = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines())


def engine_gpus(client: Callable[[], DockerClient]) -> bool:
    """GPUs here and an engine that can pass them. ``client`` is called only when there are GPUs:
    making a client asks the engine for its version, and planning on a machine without GPUs
    needs no engine."""
    if host_gpu_count() == 0:
        return False
    runtimes = client().info().get("Runtimes") or {}
    return "nvidia" in runtimes or shutil.which("nvidia-container-runtime-hook") is not None


#: Docker's own /dev/shm size, which SageMaker local mode keeps (no shm setting in SDK v3).
DOCKER_DEFAULT_SHM = "64m"


def default_shm_size() -> str:
    """Half of this machine's memory: the size the kernel gives a tmpfs ``/dev/shm`` by default.

    SageMaker does not document its ``/dev/shm`` size (UNVERIFIED), but DataLoader jobs that fail
    under Docker's 64 MB in local mode run on the service (aws/sagemaker-python-sdk#937, #3331),
    so the service's is large; the instance's own tmpfs default is the closest stand-in.
    """
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return f"{total // 2 // (1 << 20)}m"


def resolve_image(client: DockerClient, job: JobSpec, image_override: str | None) -> str:
    """The image the job's hosts run: for a script, the rung's ``image_override``, else the job's,
    else :func:`harness.runtime.images.ensure_torch_image` (built here, no registry); a bring-your-own
    image is the job's own. Pulled when the engine does not have it."""
    image = image_override or job.image if job.is_script_mode else job.image
    if image is None:
        from harness.runtime.images import ensure_torch_image  # builds only what is missing

        return ensure_torch_image(client)
    try:
        client.images.get(image)
    except ImageNotFound:
        try:
            client.images.pull(image)
        except APIError as exc:
            raise ImageError(
                f"image {image} is not here and cannot be pulled: {exc}",
                hint="build or `docker load` it first, or pass image= to the rung",
            ) from exc
    return image


def run_labels(run_id: str) -> dict[str, str]:
    """Labels on everything a run creates; the owner's pid and host name tell :func:`gc` it is live."""
    return {MANAGED: "true", RUN_ID: run_id, OWNER_PID: str(os.getpid()), OWNER_HOST: socket.gethostname()}


def gc_finished_runs() -> list[str]:
    """:func:`gc` on the engine ``DOCKER_HOST`` names, where one answers: the container rungs'
    leftover collector (``harness gc``)."""
    return gc(client()) if engine_unavailable_reason() is None else []


def gc(client: DockerClient, *, include_live: bool = False) -> list[str]:
    """Remove the containers, networks and volumes of harness runs that are over; return what went.

    A run is over when its ``harness.pid`` no longer exists on this machine (``harness.hostname``);
    another machine's runs on a shared engine cannot be checked and are kept. ``include_live=True``
    removes every labelled run. Only resources with a ``harness.run_id`` are runs (containers made
    by hand from harness images inherit ``harness.managed=true``); images are caches, kept, except
    untagged ones a run made (its tag's build steps)."""
    keep = (lambda labels: False) if include_live else is_live
    gone = remove_labelled(client, [f"{MANAGED}=true", RUN_ID], keep)
    # untagged steps of a run's image tag, which older versions left behind (one per label)
    dangling = client.images.list(filters={"dangling": True, "label": [f"{MANAGED}=true", OWNER_PID]})
    removals = [
        (image.short_id, functools.partial(client.images.remove, image.id))
        for image in dangling
        if not keep(image.labels or {})
    ]
    return gone + [f"image {name}" for name, remove in removals if quietly(remove)]


def remove_labelled(client: DockerClient, labels: list[str], keep: Callable[[dict[str, str]], bool]) -> list[str]:
    filters = {"label": labels}  # containers first: a network cannot go while one is attached
    found: list[tuple[str, Any, Callable[[], object]]] = [
        *(
            (f"container {c.name}", c.labels, functools.partial(c.remove, force=True, v=True))
            for c in client.containers.list(all=True, filters=filters)
        ),
        *((f"network {n.name}", n.attrs.get("Labels"), n.remove) for n in client.networks.list(filters=filters)),
        *(
            (f"volume {v.name}", v.attrs.get("Labels"), functools.partial(v.remove, force=True))
            for v in client.volumes.list(filters=filters)
        ),
        *(  # a run's own tag of an image (sagemaker-local labels its containers through it); not a cache
            (f"image tag {tag}", i.labels, functools.partial(client.images.remove, tag, noprune=True))
            for i in client.images.list(filters=filters)
            for tag in i.tags
            if tag.startswith(RUN_IMAGE_PREFIX)
        ),
    ]
    gone = [(name, labels or {}) for name, labels, remove in found if not keep(labels or {}) and quietly(remove)]
    for work in {labels.get(WORK_DIR, "") for _, labels in gone}:  # a killed harness's work dir too
        if Path(work).name.startswith("harness-docker-"):
            shutil.rmtree(work, ignore_errors=True)
    return [name for name, _ in gone]


def is_live(labels: dict[str, str]) -> bool:
    if labels.get(OWNER_HOST) != socket.gethostname():
        return OWNER_HOST in labels  # another machine's run: cannot tell, so keep it
    try:
        os.kill(int(labels.get(OWNER_PID, "")), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, someone else's
        pass
    return True


def pump_logs(container: Container, log_path: Path, host: str, sink: Progress | None) -> None:
    """Write the container's output as ``<timestamp> <line>``, the engine's time cut to milliseconds,
    with the values of the container's secret variables scrubbed."""
    secrets = secret_values(env_of(container.client.api.inspect_container(container.id)["Config"].get("Env")))
    pending = b""
    with log_path.open("ab", buffering=0) as log:
        for chunk in container.logs(stream=True, follow=True, timestamps=True):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                stamp, _, text = scrub(line, secrets).partition(b" ")
                log.write(millis(stamp.decode(errors="replace")).encode() + b" " + text + b"\n")
                if sink is not None:
                    sink(host, text.decode("utf-8", "replace").rstrip("\r"))
        if pending:
            log.write(now().encode() + b" " + scrub(pending, secrets) + b"\n")


def env_of(items: list[str] | None) -> dict[str, str]:
    """Docker's (and compose's) ``["K=V", ...]`` environment as a mapping."""
    return dict(item.split("=", 1) for item in items or [] if "=" in item)


def millis(stamp: str) -> str:
    """Docker's RFC 3339 nanosecond time (trailing zeros dropped) in the record's millisecond form."""
    head, _, fraction = stamp.rstrip("Z").partition(".")
    if len(head) != 19 or head[10] != "T":
        return now()
    return f"{head}.{(fraction + '000')[:3]}Z"


def is_running(container: Container) -> bool:
    try:
        return bool(container.client.api.inspect_container(container.id)["State"]["Running"])
    except NotFound:
        return False


def stop(containers: list[Container], grace_s: float) -> None:
    """``docker stop`` for all at once: SIGTERM, then SIGKILL for what is left after ``grace_s``."""
    running = [c for c in containers if is_running(c)]
    for container in running:
        quietly(functools.partial(container.kill, signal="SIGTERM"))
    deadline = time.monotonic() + grace_s
    while any(is_running(c) for c in running) and time.monotonic() < deadline:
        time.sleep(0.1)
    for container in running:
        if is_running(container):
            quietly(functools.partial(container.kill, signal="SIGKILL"))


def reclaim(client: DockerClient, image: str, paths: list[Path], labels: dict[str, str]) -> None:
    """Give files the containers' root made back to this user, so the work dir can be removed."""
    existing = [p for p in paths if p.exists()]
    if os.geteuid() == 0 or not image or not existing:
        return
    mounts = [Mount(f"/reclaim/{i}", str(p), type="bind") for i, p in enumerate(existing)]
    quietly(
        lambda: client.containers.run(
            image,
            entrypoint=["chown", "-R", f"{os.geteuid()}:{os.getegid()}", *(m["Target"] for m in mounts)],
            mounts=mounts,
            labels=labels,
            network_mode="none",
            remove=True,
        )
    )


def teardown(client: DockerClient, labels: dict[str, str], image: str, work: Path) -> None:
    """Remove everything labelled with the run (also what a Ctrl-C mid-create left unnamed here)."""
    remove_labelled(client, [f"{RUN_ID}={labels[RUN_ID]}"], keep=lambda _: False)
    reclaim(client, image, [work], labels)
    shutil.rmtree(work, ignore_errors=True)


def quietly(action: Callable[[], object]) -> bool:
    """Cleanup goes on past a resource that is already gone or refuses; True if it succeeded."""
    try:
        action()
    except (APIError, DockerException, OSError):
        return False
    return True


def shielded(action: Callable[[], None]) -> None:
    """Run cleanup to its end even if Ctrl-C is pressed again meanwhile; then re-raise it.

    The action runs in a thread and this one polls an event: an interrupted ``Thread.join`` can
    report a thread that is still running as finished (CPython before 3.13)."""
    done = threading.Event()

    def run() -> None:
        try:
            action()
        finally:
            done.set()

    interrupted: KeyboardInterrupt | None = None
    threading.Thread(target=run).start()
    while not done.is_set():
        try:
            time.sleep(0.05)
        except KeyboardInterrupt as exc:  # SIGTERM and SIGHUP arrive as Interrupted: keep which one
            interrupted = exc
    if interrupted is not None:
        raise interrupted
