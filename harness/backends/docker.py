"""The ``docker`` rung: one container per SageMaker host, on a network made for the run.

The service runs ``docker run image train`` once per instance; here each host ``algo-N`` is a
container with hostname and network alias ``algo-N`` on a private bridge network, its own
``/opt/ml`` bind-mounted from a tree written from the contract as the local rung writes it,
channels and the probe mounted read-only. What a machine rather than the contract decides
(``/dev/shm``, ulimits, GPUs, CPUs) is an explicit setting, recorded in ``rung_facts``.

Everything a run creates carries ``harness.managed=true``, ``harness.run_id`` and its owner's
pid and host name, and is removed by label in a ``finally`` (success, failure, timeout, Ctrl-C);
:func:`gc` removes what a killed harness could not. The rung makes no volumes.
"""

from __future__ import annotations

import functools
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import docker
from docker import DockerClient
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.models.networks import Network
from docker.types import DeviceRequest, Mount, Ulimit
from docker.utils import parse_bytes

from harness import artifacts
from harness.backends.base import Backend, Capabilities, Plan, Progress, copy_source
from harness.backends.local import PROBE_DIR, _artifact_overview, _collect_failure, _ranks
from harness.contract import OPT_ML, PLATFORM_DIRS, HostContract, Machine, host_contract
from harness.errors import ImageError
from harness.jobspec import JobSpec
from harness.record import RecordWriter, Status, now, redact_env, write_json
from harness.supervise import STOP_GRACE_S

MANAGED, RUN_ID, OWNER_PID, OWNER_HOST = "harness.managed", "harness.run_id", "harness.pid", "harness.hostname"
WORK_DIR = "harness.work_dir"
PROBE_MOUNT = "/opt/harness/probe"
RECORD_MOUNT = "/opt/harness/record"  # only its processes/ and ranks/ are mounted: the job never sees the manifest
PING_TIMEOUT_S = 5
#: Docker's own /dev/shm size, which SageMaker local mode keeps (no shm setting in SDK v3).
DOCKER_DEFAULT_SHM = "64m"
#: ``--ulimit memlock=-1 --ulimit stack=67108864``: what NVIDIA's framework containers ask for, so
#: pinned memory and deep recursion behave as on a training instance rather than under Docker's
#: 64 KiB memlock. SageMaker's own limits are not documented (UNVERIFIED).
DEFAULT_ULIMITS = {"memlock": -1, "stack": 67108864}


def default_shm_size() -> str:
    """Half of this machine's memory: the size the kernel gives a tmpfs ``/dev/shm`` by default.

    SageMaker does not document its ``/dev/shm`` size (UNVERIFIED), but DataLoader jobs that fail
    under Docker's 64 MB in local mode run on the service (aws/sagemaker-python-sdk#937, #3331),
    so the service's is large; the instance's own tmpfs default is the closest stand-in.
    """
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return f"{total // 2 // (1 << 20)}m"


def effective_ulimits(requested: dict[str, int]) -> tuple[dict[str, int], dict[str, str]]:
    """The requested ulimits, lowered to this machine's hard limit where that cannot be raised.

    An engine without CAP_SYS_RESOURCE (dockerd in a CI container) cannot start a container
    whose limit exceeds its own ("error setting rlimit"); it is taken to run here, under this
    process's limits. Returns the limits to set and why any was lowered.
    """
    effective, lowered = dict(requested), {}
    for name, value in requested.items():
        kind = getattr(resource, f"RLIMIT_{name.upper()}", None)
        hard = resource.getrlimit(kind)[1] if kind is not None else resource.RLIM_INFINITY
        if hard != resource.RLIM_INFINITY and (value < 0 or value > hard) and not _can_raise(kind):
            effective[name] = hard
            lowered[name] = f"{value} requested; this machine's hard limit is {hard} and cannot be raised here"
    return effective, lowered


@functools.cache
def _can_raise(kind: int) -> bool:
    code = f"import resource; resource.setrlimit({kind}, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))"
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True).returncode == 0


@functools.cache
def host_gpu_count() -> int:
    """NVIDIA GPUs here, counted as the toolkit counts them (``nvidia-smi --list-gpus``)."""
    try:
        out = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines())


class DockerBackend(Backend):
    """Settings: ``image`` (script-mode base; default the job's, else :func:`ensure_torch_image`),
    ``gpus`` (default: when this machine has NVIDIA GPUs and the engine can pass them), ``shm_size``
    (default :func:`default_shm_size`; ``"64m"`` reproduces Docker and local mode), ``ulimits``."""

    name = "docker"
    capabilities = Capabilities(gpus=True, separate_hosts=True, containers=True)

    def __init__(self, *, image: str | None = None, gpus: bool | None = None, shm_size: str | None = None,
                 ulimits: dict[str, int] | None = None, stop_grace_s: float = STOP_GRACE_S,
                 client: DockerClient | None = None) -> None:
        self.image = image
        self.gpus = gpus
        self.shm_size = shm_size or default_shm_size()
        self.ulimits = dict(DEFAULT_ULIMITS if ulimits is None else ulimits)
        self.stop_grace_s = stop_grace_s
        self._docker = client

    def client(self) -> DockerClient:
        """Made on first use, so that planning and importing need no engine."""
        if self._docker is None:
            self._docker = client()
        return self._docker

    def unavailable_reason(self) -> str | None:
        try:  # a short-timeout client of its own, so that a dead DOCKER_HOST never hangs the ladder
            (self._docker or docker.from_env(timeout=PING_TIMEOUT_S)).ping()
        except (DockerException, OSError) as exc:
            cause = re.search(r"Connection refused|No such file or directory|Permission denied|timed out|"
                              r"Network is unreachable", str(exc))
            where = os.environ.get("DOCKER_HOST", "the default socket")
            return (f"no Docker engine answers at {where} ({cause.group(0) if cause else type(exc).__name__}); "
                    "start dockerd, join the docker group or set DOCKER_HOST")
        if self.gpus and not self._engine_gpus():
            return "gpus=True, but this machine has no NVIDIA GPU or the engine has no NVIDIA runtime"
        return None

    def unsupported_reason(self, job: JobSpec) -> str | None:
        s3 = [name for name, channel in job.channels.items() if channel.is_s3]
        return f"channels {s3} are s3:// URIs; this rung mounts local directories only" if s3 else None

    def _engine_gpus(self) -> bool:
        """GPUs here and an engine that can pass them (asked only when there are GPUs)."""
        if host_gpu_count() == 0:
            return False
        runtimes = self.client().info().get("Runtimes") or {}
        return "nvidia" in runtimes or shutil.which("nvidia-container-runtime-hook") is not None

    def _gpu_ids(self, job: JobSpec) -> dict[str, list[str]]:
        """Each host's own GPUs, as each instance has its own; all of them to every host where there
        are fewer GPUs than hosts (what local mode does, and recorded as such)."""
        enabled = self.gpus if self.gpus is not None else self._engine_gpus()
        count = host_gpu_count() if enabled else 0
        per = count // len(job.hosts)
        if per == 0:
            return {host: [str(i) for i in range(count)] for host in job.hosts}
        return {host: [str(i) for i in range(n * per, (n + 1) * per)] for n, host in enumerate(job.hosts)}

    def plan(self, job: JobSpec) -> Plan:
        gpus = self._gpu_ids(job)
        machine = Machine(num_cpus=os.cpu_count() or 1, num_gpus=len(gpus[job.hosts[0]]), network_interface="eth0",
                          python="python3")
        nccl = {"NCCL_DEBUG": "INFO", **{k: v for k, v in job.environment.items() if k.startswith("NCCL_")}}
        contracts = {host: host_contract(job, host, machine) for host in job.hosts}
        ulimits, lowered = effective_ulimits(self.ulimits)
        if machine.num_gpus:  # NCCL's INFO lines are the evidence a GPU diff needs; the job's NCCL_* win
            contracts = {h: replace(c, launcher_env={**c.launcher_env, **nccl}) for h, c in contracts.items()}
        facts: dict[str, Any] = {
            "work_dir": str(Path(tempfile.gettempdir()) / f"harness-docker-{uuid.uuid4().hex[:8]}"),
            "image": (self.image or job.image if job.is_script_mode else job.image)
            or "harness/torch (to be built by harness.images.ensure_torch_image)",
            "network": "a bridge network per run; each container's hostname and alias is its host name",
            "opt_ml": "each host's own tree bind-mounted on /opt/ml",
            "channels": "local directories bind-mounted read-only on /opt/ml/input/data/<channel>",
            "environment": "the contract's platform and launcher layers" if job.is_script_mode
            else "the platform layer only: the image's own program adds SM_*",
            "shm_size": self.shm_size, "shm_size_bytes": parse_bytes(self.shm_size),
            "ulimits": ulimits, "ulimits_requested": self.ulimits, "ulimits_lowered": lowered,
            "gpus": {"devices": gpus, "shared_by_all_hosts": len(job.hosts) > 1 and gpus[job.hosts[0]] == gpus[
                job.hosts[-1]], "nccl_env": nccl} if machine.num_gpus else "none",
            "machine": {"num_cpus": machine.num_cpus, "num_gpus": machine.num_gpus, "network_interface": "eth0",
                        "num_cpus_source": "os.cpu_count() of the Docker host (no CPU limit is set)"},
            "init": "none: the command is PID 1, as under `docker run image train`",
            "stop": f"SIGTERM, SIGKILL after {self.stop_grace_s:g} s",
        }
        return Plan(self.name, job, contracts, facts)

    def _execute(self, plan: Plan, record: RecordWriter, progress: Progress | None) -> Status:
        client, job = self.client(), plan.job
        work = Path(str(plan.facts["work_dir"]))
        labels = {**run_labels(str(record.manifest["run_id"])), WORK_DIR: str(work)}
        containers: dict[str, Container] = {}
        image = ""
        try:  # everything made below carries the run's labels; the finally removes it by label
            image = self._resolve_image(client, job)
            record.set_fact("image", image)
            network = client.networks.create(f"harness-{labels[RUN_ID]}", driver="bridge", labels=labels)
            trees = {host: work / host / "opt_ml" for host in plan.hosts}
            for host, contract in plan.hosts.items():
                mounts = self._prepare_host(job, contract, trees[host], record)
                started = time.monotonic()
                containers[host] = self._create(client, image, job, contract, mounts, network, labels, plan.facts)
                created = time.monotonic()
                containers[host].start()
                record.host_result(host, container=containers[host].name,
                                   container_create_s=round(created - started, 3),
                                   container_start_s=round(time.monotonic() - created, 3))
            timed_out = self._supervise(containers, job.max_run, record, progress)
            owned_by_root = [work, record.root / "processes", record.root / "ranks"]
            _shielded(lambda: _reclaim(client, image, owned_by_root, labels))
            codes = {h: _host_result(job, plan.hosts[h], c, trees[h], record) for h, c in containers.items()}
            record.manifest["artifacts"] = _artifact_overview(artifacts.collect(trees, record.root))
            record.manifest["ranks"] = _ranks(record.root)
        finally:
            _shielded(lambda: _teardown(client, labels, image, work))
        if timed_out:
            return "timeout"
        return "succeeded" if all(code == 0 for code in codes.values()) else "failed"

    def _resolve_image(self, client: DockerClient, job: JobSpec) -> str:
        image = self.image or job.image if job.is_script_mode else job.image
        if image is None:
            from harness.images import ensure_torch_image  # builds only what is missing

            return ensure_torch_image(client)
        try:
            client.images.get(image)
        except ImageNotFound:
            try:
                client.images.pull(image)
            except APIError as exc:
                raise ImageError(f"image {image} is not here and cannot be pulled: {exc}",
                                 hint="build or `docker load` it first, or pass image= to the rung") from exc
        return image

    def _prepare_host(self, job: JobSpec, contract: HostContract, tree: Path, record: RecordWriter) -> list[Mount]:
        """Write the host's /opt/ml tree and its ``received/`` record; return its mounts."""
        for sub in PLATFORM_DIRS:
            (tree / sub).mkdir(parents=True, exist_ok=True)
        for relative, content in contract.files.items():
            (tree / relative).write_text(content, encoding="utf-8")
        copy_source(job, tree / PurePosixPath(contract.cwd).relative_to(contract.opt_ml))
        mounts = [Mount(str(OPT_ML), str(tree), type="bind"),
                  Mount(PROBE_MOUNT, str(PROBE_DIR), type="bind", read_only=True)]
        for name, channel in job.channels.items():
            (tree / "input" / "data" / name).mkdir(exist_ok=True)  # made here, so that Docker does not make it as root
            mounts.append(Mount(f"{OPT_ML}/input/data/{name}", channel.source, type="bind", read_only=True))
        for sub in ("processes", "ranks"):
            (record.root / sub).mkdir(exist_ok=True)
            mounts.append(Mount(f"{RECORD_MOUNT}/{sub}", str(record.root / sub), type="bind"))
        received = record.host_dir(contract.host) / "received"
        write_json(received / "command.json", {"argv": contract.command, "cwd": str(contract.cwd)})
        write_json(received / "env.json", redact_env(_container_env(job, contract)))
        for relative, content in contract.files.items():
            (received / PurePosixPath(relative).name).write_text(content, encoding="utf-8")
        return mounts

    def _create(self, client: DockerClient, image: str, job: JobSpec, contract: HostContract, mounts: list[Mount],
                network: Network, labels: dict[str, str], facts: dict[str, Any]) -> Container:
        host, gpus = contract.host, facts["gpus"]
        script = {"entrypoint": contract.command, "working_dir": str(contract.cwd)} if job.is_script_mode else {
            "command": ["train"]}  # bring-your-own image: `docker run image train`, its own entrypoint
        devices = [DeviceRequest(driver="nvidia", device_ids=gpus["devices"][host], capabilities=[["gpu"]])] \
            if isinstance(gpus, dict) else None
        return client.containers.create(
            image, name=f"{labels[RUN_ID]}-{host}", hostname=host, environment=_container_env(job, contract),
            labels={**labels, "harness.host": host}, network=network.name, mounts=mounts,
            networking_config={network.name: client.api.create_endpoint_config(aliases=[host])},
            shm_size=self.shm_size, ulimits=[Ulimit(name=k, soft=v, hard=v) for k, v in facts["ulimits"].items()],
            device_requests=devices, **script)

    def _supervise(self, containers: dict[str, Container], max_run: int, record: RecordWriter,
                   progress: Progress | None) -> bool:
        """Stream every host's log until all have exited; stop them all at ``max_run`` or on Ctrl-C."""
        pumps = [threading.Thread(target=_pump, args=(c, record.host_dir(h) / "log.txt", h, progress), daemon=True)
                 for h, c in containers.items()]
        for pump in pumps:
            pump.start()
        deadline, timed_out = time.monotonic() + max_run, False
        try:
            while any(_running(c) for c in containers.values()):
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(0.25)
        finally:
            _shielded(lambda: _stop(list(containers.values()), self.stop_grace_s))
            for pump in pumps:
                pump.join(timeout=5)
        return timed_out


def _host_result(job: JobSpec, contract: HostContract, container: Container, tree: Path, record: RecordWriter) -> int:
    """Exit code, failure file and the engine's start and end times of one host."""
    state = container.client.api.inspect_container(container.id)["State"]
    code = int(state["ExitCode"])
    _collect_failure(job, contract, tree, record, code, _millis(state["StartedAt"]), _millis(state["FinishedAt"]))
    record.host_result(contract.host, oom_killed=bool(state.get("OOMKilled")))
    return code


def client() -> DockerClient:
    """A client for the engine ``DOCKER_HOST`` names, else the default socket (``harness gc`` uses it)."""
    return docker.from_env()


def run_labels(run_id: str) -> dict[str, str]:
    """Labels on everything a run creates; the owner's pid and host name tell :func:`gc` it is live."""
    return {MANAGED: "true", RUN_ID: run_id, OWNER_PID: str(os.getpid()), OWNER_HOST: socket.gethostname()}


def gc(client: DockerClient, *, include_live: bool = False) -> list[str]:
    """Remove the containers, networks and volumes of harness runs that are over; return what went.

    A run is over when its ``harness.pid`` no longer exists on this machine (``harness.hostname``);
    another machine's runs on a shared engine cannot be checked and are kept. ``include_live=True``
    removes every labelled run. Only resources with a ``harness.run_id`` are runs (containers made
    by hand from harness images inherit ``harness.managed=true``); images are caches, kept.
    """
    keep = (lambda labels: False) if include_live else _live
    return _remove_labelled(client, [f"{MANAGED}=true", RUN_ID], keep)


def _remove_labelled(client: DockerClient, labels: list[str], keep: Callable[[dict[str, str]], bool]) -> list[str]:
    filters = {"label": labels}  # containers first: a network cannot go while one is attached
    found: list[tuple[str, Any, Callable[[], object]]] = [
        *((f"container {c.name}", c.labels, functools.partial(c.remove, force=True, v=True))
          for c in client.containers.list(all=True, filters=filters)),
        *((f"network {n.name}", n.attrs.get("Labels"), n.remove) for n in client.networks.list(filters=filters)),
        *((f"volume {v.name}", v.attrs.get("Labels"), functools.partial(v.remove, force=True))
          for v in client.volumes.list(filters=filters)),
    ]
    gone = [(name, labels or {}) for name, labels, remove in found if not keep(labels or {}) and _quietly(remove)]
    for work in {labels.get(WORK_DIR, "") for _, labels in gone}:  # a killed harness's work dir too
        if Path(work).name.startswith("harness-docker-"):
            shutil.rmtree(work, ignore_errors=True)
    return [name for name, _ in gone]


def _live(labels: dict[str, str]) -> bool:
    if labels.get(OWNER_HOST) != socket.gethostname():
        return OWNER_HOST in labels  # another machine's run: cannot tell, so keep it
    try:
        os.kill(int(labels.get(OWNER_PID, "")), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, someone else's
        pass
    return True


def _container_env(job: JobSpec, contract: HostContract) -> dict[str, str]:
    """The contract's variables plus the probe's; nothing is inherited from the harness's machine.

    A bring-your-own image gets the platform layer only, as from the service: the launcher layer
    (``SM_*``) is what the image's own program (the toolkit, if it has it) adds."""
    env = contract.env if job.is_script_mode else contract.platform_env
    python_path = ":".join(p for p in (PROBE_MOUNT, env.get("PYTHONPATH")) if p)
    return {"PYTHONUNBUFFERED": "1", **env, "PYTHONPATH": python_path,
            "HARNESS_PROBE_DIR": RECORD_MOUNT, "HARNESS_HOST": contract.host}


def _pump(container: Container, log_path: Path, host: str, sink: Progress | None) -> None:
    """Write the container's output as ``<timestamp> <line>``, the engine's time cut to milliseconds."""
    pending = b""
    with log_path.open("ab", buffering=0) as log:
        for chunk in container.logs(stream=True, follow=True, timestamps=True):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                stamp, _, text = line.partition(b" ")
                log.write(_millis(stamp.decode(errors="replace")).encode() + b" " + text + b"\n")
                if sink is not None:
                    sink(host, text.decode("utf-8", "replace").rstrip("\r"))
        if pending:
            log.write(now().encode() + b" " + pending + b"\n")


def _millis(stamp: str) -> str:
    """Docker's RFC 3339 nanosecond time (trailing zeros dropped) in the record's millisecond form."""
    head, _, fraction = stamp.rstrip("Z").partition(".")
    if len(head) != 19 or head[10] != "T":
        return now()
    return f"{head}.{(fraction + '000')[:3]}Z"


def _running(container: Container) -> bool:
    try:
        return bool(container.client.api.inspect_container(container.id)["State"]["Running"])
    except NotFound:
        return False


def _stop(containers: list[Container], grace_s: float) -> None:
    """``docker stop`` for all at once: SIGTERM, then SIGKILL for what is left after ``grace_s``."""
    running = [c for c in containers if _running(c)]
    for container in running:
        _quietly(functools.partial(container.kill, signal="SIGTERM"))
    deadline = time.monotonic() + grace_s
    while any(_running(c) for c in running) and time.monotonic() < deadline:
        time.sleep(0.1)
    for container in running:
        if _running(container):
            _quietly(functools.partial(container.kill, signal="SIGKILL"))


def _reclaim(client: DockerClient, image: str, paths: list[Path], labels: dict[str, str]) -> None:
    """Give files the containers' root made back to this user, so the work dir can be removed."""
    existing = [p for p in paths if p.exists()]
    if os.geteuid() == 0 or not image or not existing:
        return
    mounts = [Mount(f"/reclaim/{i}", str(p), type="bind") for i, p in enumerate(existing)]
    _quietly(lambda: client.containers.run(
        image, entrypoint=["chown", "-R", f"{os.geteuid()}:{os.getegid()}", *(m["Target"] for m in mounts)],
        mounts=mounts, labels=labels, network_mode="none", remove=True))


def _teardown(client: DockerClient, labels: dict[str, str], image: str, work: Path) -> None:
    """Remove everything labelled with the run (also what a Ctrl-C mid-create left unnamed here)."""
    _remove_labelled(client, [f"{RUN_ID}={labels[RUN_ID]}"], keep=lambda _: False)
    _reclaim(client, image, [work], labels)
    shutil.rmtree(work, ignore_errors=True)


def _quietly(action: Callable[[], object]) -> bool:
    """Cleanup goes on past a resource that is already gone or refuses; True if it succeeded."""
    try:
        action()
    except (APIError, DockerException, OSError):
        return False
    return True


def _shielded(action: Callable[[], None]) -> None:
    """Run cleanup to its end even if Ctrl-C is pressed again meanwhile; then re-raise it.

    The action runs in a thread and this one polls an event: an interrupted ``Thread.join`` can
    report a thread that is still running as finished (CPython before 3.13)."""
    done = threading.Event()

    def run() -> None:
        try:
            action()
        finally:
            done.set()

    interrupted = False
    threading.Thread(target=run).start()
    while not done.is_set():
        try:
            time.sleep(0.05)
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt
