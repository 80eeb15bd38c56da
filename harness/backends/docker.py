"""The ``docker`` rung: one container per SageMaker host, on a network made for the run.

The service runs ``docker run image train`` once per instance; here each host ``algo-N`` is a
container with hostname and network alias ``algo-N`` on a private bridge network (every host's
name also in every container's ``/etc/hosts``, so that it resolves, as on the service, after its
container has exited), its own
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
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from docker import DockerClient
from docker.errors import DockerException
from docker.models.containers import Container
from docker.models.networks import Network
from docker.types import DeviceRequest, Mount, Ulimit
from docker.utils import parse_bytes
from pydantic import Field, NonNegativeFloat, PositiveFloat, field_validator

from harness.backends import container_installs, toolkit
from harness.backends.base import Capabilities, Progress, RungOptions
from harness.backends.containers import (
    LOG_DRAIN_S,
    RUN_ID,
    WORK_DIR,
    EngineClient,
    default_shm_size,
    engine_gpus,
    engine_unavailable_reason,
    gc_finished_runs,
    host_gpu_count,
    host_result,
    is_running,
    pump_logs,
    quietly,
    reclaim,
    run_labels,
    shielded,
    stop,
    teardown,
)
from harness.backends.docker_network import container_name, network_name, network_with_addresses
from harness.backends.host_rung import HostPlan, HostRung, HostsEnded, HostSession
from harness.backends.hosts import (
    CHANNELS_FACT,
    compiled_probe,
    record_received,
    s3_unsupported,
    write_host_tree,
)
from harness.record.run_record import RecordWriter
from harness.runtime import images, interrupts, requirements
from harness.runtime.hang_watch import DEFAULT_HANG_AFTER_S, HangWatch, hang_after
from harness.runtime.supervise import STOP_GRACE_S
from harness.spec.host_contract import OPT_ML, HostContract, Machine, host_contract
from harness.spec.job import JobSpec

PROBE_MOUNT = "/opt/harness/probe"
RECORD_MOUNT = "/opt/harness/record"  # only its processes/ and ranks/ are mounted: the job never sees the manifest
#: ``--ulimit memlock=-1 --ulimit stack=67108864``: what NVIDIA's framework containers ask for, so
#: pinned memory and deep recursion behave as on a training instance rather than under Docker's
#: 64 KiB memlock. SageMaker's own limits are not documented (UNVERIFIED).
DEFAULT_ULIMITS = {"memlock": -1, "stack": 67108864}


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


class DockerOptions(RungOptions):
    #: Script-mode base image; default the job's, else :func:`harness.runtime.images.ensure_torch_image`.
    image: str | None = None
    #: Pass NVIDIA GPUs; default: when this machine has them and the engine can pass them.
    gpus: bool | None = None
    #: ``/dev/shm`` size; default :func:`default_shm_size`; ``"64m"`` reproduces Docker and local mode.
    shm_size: str | None = None
    ulimits: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_ULIMITS))
    #: Seconds between SIGTERM and SIGKILL when the job is stopped.
    stop_grace_s: NonNegativeFloat = STOP_GRACE_S
    #: Seconds without any rank's progress before the stacks are dumped and the job stopped.
    hang_after_s: PositiveFloat = DEFAULT_HANG_AFTER_S
    #: Variables set in every container under the contract's: what a local run would inherit from
    #: the machine (``harness bisect`` sets them to find the one a job depends on).
    environment: dict[str, str] = Field(default_factory=dict)
    #: ``bridge``: each host its own network stack on a private network, as on SageMaker;
    #: ``shared``: every host in the first one's, one loopback for all, as on the local rung.
    network: Literal["bridge", "shared"] = "bridge"

    @field_validator("shm_size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_bytes(value)
            except DockerException as exc:
                raise ValueError(f"not a size Docker understands (e.g. 64m, 8g): {exc}") from None
        return value


@dataclass
class DockerPlan(HostPlan):
    """The contract, and what the run needs that the contract does not say."""

    shm_size: str = ""
    ulimits: dict[str, int] = field(default_factory=dict)
    gpus: dict[str, list[str]] = field(default_factory=dict)  # host → device ids; empty without GPUs


class DockerBackend(EngineClient, HostRung[DockerPlan]):
    name = "docker"
    capabilities = Capabilities(gpus=True, separate_hosts=True, containers=True, hang_detection=True)
    Options = DockerOptions
    options: DockerOptions

    def unavailable_reason(self) -> str | None:
        return engine_unavailable_reason(self._docker, gpus=bool(self.options.gpus))

    @classmethod
    def leftover_collectors(cls) -> tuple[Callable[[], list[str]], ...]:
        return (gc_finished_runs,)  # containers and networks, by the run's labels

    def unsupported_reason(self, job: JobSpec) -> str | None:
        s3_reason = s3_unsupported(job)
        if s3_reason:
            return s3_reason
        default_image = job.is_script_mode and not (self.options.image or job.image)
        if default_image and shutil.which("debootstrap") is None and not self.client().images.list("harness/torch"):
            return (
                "the script needs an image with python3 and torch: pass --image, set the job's image, "
                "or install debootstrap so the harness can build one without a registry"
            )
        return None

    def _toolkit_blocker(self) -> str | None:
        """Why the default toolkit image cannot be had here (the engine is asked whether it has it
        only where it answers)."""
        reachable = engine_unavailable_reason(self._docker) is None
        return images.toolkit_build_blocker(self.client() if reachable else None)

    def _gpu_ids(self, job: JobSpec) -> dict[str, list[str]]:
        """Each host's own GPUs, as each instance has its own; all of them to every host where there
        are fewer GPUs than hosts (what local mode does, and recorded as such)."""
        enabled = self.options.gpus if self.options.gpus is not None else engine_gpus(self.client)
        count = host_gpu_count() if enabled else 0
        per = count // len(job.hosts)
        if per == 0:
            return {host: [str(i) for i in range(count)] for host in job.hosts}
        return {host: [str(i) for i in range(n * per, (n + 1) * per)] for n, host in enumerate(job.hosts)}

    def plan(self, job: JobSpec) -> DockerPlan:
        gpus = self._gpu_ids(job)
        work = Path(tempfile.gettempdir()) / f"harness-docker-{uuid.uuid4().hex[:8]}"
        shm_size = self.options.shm_size or default_shm_size()
        machine = Machine(
            num_cpus=os.cpu_count() or 1, num_gpus=len(gpus[job.hosts[0]]), network_interface="eth0", python="python3"
        )
        nccl = {"NCCL_DEBUG": "INFO", **{k: v for k, v in job.environment.items() if k.startswith("NCCL_")}}
        contracts = {host: host_contract(job, host, machine) for host in job.hosts}
        ulimits, lowered = effective_ulimits(self.options.ulimits)
        if machine.num_gpus:  # NCCL's INFO lines are the evidence a GPU diff needs; the job's NCCL_* win
            contracts = {h: replace(c, launcher_env={**c.launcher_env, **nccl}) for h, c in contracts.items()}
        facts: dict[str, Any] = {
            "work_dir": str(work),
            "image": (self.options.image or job.image if job.is_script_mode else job.image)
            or "harness/torch (to be built by harness.runtime.images.ensure_torch_image)",
            "network": "a bridge network per run; each container's hostname and alias is its host name, and every "
            "host's fixed address is in each container's /etc/hosts (a host resolves after its container ends)"
            if self.options.network == "bridge"
            else "shared: every container in the first one's network namespace "
            "(one loopback; algo-N resolve to 127.0.0.1; every host reports the first one's hostname)",
            "inherited_environment": sorted(self.options.environment),
            "opt_ml": "each host's own tree bind-mounted on /opt/ml",
            "channels": CHANNELS_FACT.format(how="bind-mounted read-only from"),
            "environment": "the contract's platform and launcher layers"
            if job.is_script_mode
            else "the platform layer only: the image's own program adds SM_*",
            "shm_size": shm_size,
            "shm_size_bytes": parse_bytes(shm_size),
            "ulimits": ulimits,
            "ulimits_requested": self.options.ulimits,
            "ulimits_lowered": lowered,
            "gpus": {
                "devices": gpus,
                "shared_by_all_hosts": len(job.hosts) > 1 and gpus[job.hosts[0]] == gpus[job.hosts[-1]],
                "nccl_env": nccl,
            }
            if machine.num_gpus
            else "none",
            "machine": {
                "num_cpus": machine.num_cpus,
                "num_gpus": machine.num_gpus,
                "network_interface": "eth0",
                "num_cpus_source": "os.cpu_count() of the Docker host (no CPU limit is set)",
            },
            "init": "none: the command is PID 1, as under `docker run image train`",
            "stop": f"SIGTERM, SIGKILL after {self.options.stop_grace_s:g} s",
        }
        if job.is_script_mode and job.launcher == "toolkit":
            default = (self.options.image or job.image) is None
            facts["toolkit"] = toolkit.planned(job, self.options.image, self._toolkit_blocker() if default else None)
        container_installs.plan_fact(job, facts)
        return DockerPlan(
            self.name,
            job,
            contracts,
            facts,
            shared_network=self.options.network == "shared",
            work_dir=work,
            shm_size=shm_size,
            ulimits=ulimits,
            gpus=gpus if machine.num_gpus else {},
        )

    def session(self, plan: DockerPlan, record: RecordWriter) -> DockerSession:
        return DockerSession(plan, record, self.options, self.client())


class DockerSession(HostSession[DockerPlan]):
    """Each host a container on a bridge network made for the run; everything it makes carries
    the run's labels, and :meth:`close` removes it by label."""

    def __init__(self, plan: DockerPlan, record: RecordWriter, options: DockerOptions, client: DockerClient) -> None:
        super().__init__(plan, record)
        self.options, self.client = options, client
        self.labels = {**run_labels(record.manifest.run_id), WORK_DIR: str(plan.work_dir)}
        self.image = ""
        self._toolkit: str | None = None  # the image's toolkit version, where it has one
        self._network: Network | None = None
        self._addresses: dict[str, str] = {}
        self._setup: container_installs.ContainerSetup | None = None
        self._mounts: dict[str, list[Mount]] = {}
        self._containers: dict[str, Container] = {}

    def start(self) -> None:
        job, plan, record = self.job, self.plan, self.record
        self.image, unbuildable = toolkit.image_for(self.client, job, self.options.image)
        record.set_fact("image", self.image)
        uses_toolkit = job.is_script_mode and job.launcher == "toolkit"
        self._toolkit = toolkit.found_in_image(self.client, self.image, self.labels) if uses_toolkit else None
        if self._toolkit:  # the image's own toolkit makes the launcher layer (docs/toolkit.md)
            plan.hosts = toolkit.hand_over(plan.hosts, self._toolkit)
            record.set_fact("environment", "the contract's platform layer; the image's toolkit adds the rest")
        if uses_toolkit:
            emulated = toolkit.EMULATED + (f": {unbuildable}" if unbuildable else "")
            record.set_fact("toolkit", self._toolkit or emulated)
        self._network, self._addresses = network_with_addresses(
            self.client, network_name(self.labels[RUN_ID]), self.labels, job.hosts
        )

    def install_requirements(self) -> bool:
        """The wheels, got by the host's pip before any container starts."""
        hosts = list(self.plan.hosts)
        try:
            self._setup = container_installs.prepare_containers(
                self.client, self.image, self.job, hosts, self.plan.work_dir, self.record, self.labels
            )
        except requirements.InstallFailed as failed:
            container_installs.fail_containers(self.job, hosts, self.record, failed)
            return False
        return True

    def prepare_host(self, contract: HostContract, channels: dict[str, Path], tree: Path) -> None:
        """Write the host's /opt/ml tree and its ``received/`` record; keep its mounts."""
        record = self.record
        write_host_tree(self.job, contract, tree)
        mounts = [
            Mount(str(OPT_ML), str(tree), type="bind"),
            Mount(PROBE_MOUNT, str(compiled_probe()), type="bind", read_only=True),
        ]
        for name, source in channels.items():
            (tree / "input" / "data" / name).mkdir(exist_ok=True)  # made here, so that Docker does not make it as root
            mounts.append(Mount(f"{OPT_ML}/input/data/{name}", str(source), type="bind", read_only=True))
        for sub in ("processes", "ranks"):
            (record.root / sub).mkdir(exist_ok=True)
            mounts.append(Mount(f"{RECORD_MOUNT}/{sub}", str(record.root / sub), type="bind"))
        record_received(record, contract, self._env(contract))
        self._mounts[contract.host] = mounts + container_installs.container_mounts(self._setup, contract.host)

    def run_hosts(self, progress: Progress | None) -> HostsEnded:
        for host, contract in self.plan.hosts.items():
            started = time.monotonic()
            container = self._containers[host] = self._create(
                container_installs.container_contract(self._setup, self.job, contract, PROBE_MOUNT), self._mounts[host]
            )
            created = time.monotonic()
            container.start()
            self.record.host_result(
                host,
                container=container.name,
                container_create_s=round(created - started, 3),
                container_start_s=round(time.monotonic() - created, 3),
            )
        ended = self._supervise(progress)
        owned_by_root = [self.plan.work_dir, self.record.root / "processes", self.record.root / "ranks"]
        shielded(lambda: reclaim(self.client, self.image, owned_by_root, self.labels))
        return ended

    def collect_host(self, contract: HostContract, tree: Path) -> int:
        return host_result(self.job, contract, self._containers[contract.host], tree, self.record)

    def collected(self) -> None:
        container_installs.collect_containers(self.job, self._setup, self.record)
        if self._toolkit:
            toolkit.record_launched(self.record, self.plan.hosts)

    def close(self) -> None:
        shielded(lambda: teardown(self.client, self.labels, self.image, self.plan.work_dir))

    def _create(self, contract: HostContract, mounts: list[Mount]) -> Container:
        client, plan, labels, network = self.client, self.plan, self.labels, self._network
        assert network is not None, "start() makes the network"
        host, job = contract.host, plan.job
        script = (
            {"entrypoint": contract.command, "working_dir": str(contract.cwd)}
            if job.is_script_mode
            else {"command": ["train"]}
        )  # bring-your-own image: `docker run image train`, its own entrypoint
        devices = (
            [DeviceRequest(driver="nvidia", device_ids=plan.gpus[host], capabilities=[["gpu"]])] if plan.gpus else None
        )
        first = container_name(labels[RUN_ID], job.hosts[0])
        networking: dict[str, Any] = {
            "hostname": host,
            "network": network.name,
            "networking_config": {
                network.name: client.api.create_endpoint_config(aliases=[host], ipv4_address=self._addresses[host])
            },
            "extra_hosts": self._addresses,
        }
        if self.options.network == "shared":
            networking = (
                {"network_mode": f"container:{first}"}
                if host != job.hosts[0]
                else {**networking, "extra_hosts": {other: "127.0.0.1" for other in job.hosts[1:]}}
            )
        return client.containers.create(
            self.image,
            name=container_name(labels[RUN_ID], host),
            environment=self._env(contract),
            labels={**labels, "harness.host": host},
            mounts=mounts,
            shm_size=plan.shm_size,
            ulimits=[Ulimit(name=k, soft=v, hard=v) for k, v in plan.ulimits.items()],
            device_requests=devices,
            **networking,
            **script,
        )

    def _env(self, contract: HostContract) -> dict[str, str]:
        return {**self.options.environment, **_container_env(self.job, contract)}

    def _supervise(self, progress: Progress | None) -> HostsEnded:
        """Stream every host's log until all have exited; stop them all at ``max_run``, when no rank
        makes progress for ``hang_after_s`` (after their stacks are dumped), or on Ctrl-C."""
        containers, record, max_run = self._containers, self.record, self.job.max_run
        pumps = [
            threading.Thread(target=pump_logs, args=(c, record.host_dir(h) / "log.txt", h, progress), daemon=True)
            for h, c in containers.items()
        ]
        for pump in pumps:
            pump.start()
        after = hang_after(self.options.hang_after_s, "hang_after_s" in self.options.model_fields_set, max_run)
        record.set_fact("hang_after_s", after)
        hang = HangWatch(
            record.root,
            after,
            functools.partial(signal_rank, containers),
            logs=lambda: [record.host_dir(host) / "log.txt" for host in containers],
        )
        deadline, timed_out, hung = time.monotonic() + max_run, False, False
        with interrupts.deferred():
            try:
                while any(is_running(c) for c in containers.values()) and not interrupts.requested():
                    if time.monotonic() > deadline:
                        timed_out = True
                        hang.dump()  # where each rank was when time ran out
                        break
                    if hang.poll():
                        hung = True
                        break
                    time.sleep(0.25)
            finally:
                shielded(lambda: stop(list(containers.values()), self.options.stop_grace_s))
                for pump in pumps:
                    pump.join(timeout=LOG_DRAIN_S)
        interrupts.raise_if_requested()
        return HostsEnded(timed_out=timed_out, hung=hung)


def signal_rank(containers: dict[str, Container], pid: int, host: str | None) -> None:
    """SIGUSR1 to a rank's process inside its host's container (the pid is the container's own),
    so that the probe dumps its stacks; a rank of unknown host is left alone, as pids repeat
    across containers and SIGUSR1 ends a process that has no handler for it."""
    container = containers.get(host or "")
    if container is not None:
        quietly(lambda: container.exec_run(["/bin/sh", "-c", f"kill -USR1 {int(pid)}"], detach=True))


def _container_env(job: JobSpec, contract: HostContract) -> dict[str, str]:
    """The contract's variables plus the probe's; nothing is inherited from the harness's machine.

    A bring-your-own image gets the platform layer only, as from the service: the launcher layer
    (``SM_*``) is what the image's own program (the toolkit, if it has it) adds."""
    env = contract.env if job.is_script_mode else contract.platform_env
    python_path = ":".join(p for p in (PROBE_MOUNT, env.get("PYTHONPATH")) if p)
    return {
        "PYTHONUNBUFFERED": "1",
        **env,
        "PYTHONPATH": python_path,
        "HARNESS_PROBE_DIR": RECORD_MOUNT,
        "HARNESS_HOST": contract.host,
    }
