"""The ``local`` and ``local-gpu`` rungs: every host's processes on this machine, no containers.

Each SageMaker host becomes a launcher process with its own ``/opt/ml`` tree built by
:mod:`harness.spec.host_contract`. With private namespaces (:mod:`harness.runtime.sandbox`) the job sees exactly
what SageMaker gives it: each host its own network (``algo-N`` resolve to distinct addresses on a
private bridge, ``127.0.0.1`` is the host's own, port 7777 is free on each host), and ``/opt/ml``
is the host's own tree, so scripts that hard-code ``/opt/ml`` paths write into the record's work
dir, never into the machine's real ``/opt/ml``, and a script that rendezvous on ``localhost``
fails here as it does on real instances. ``/tmp``, ``/var/tmp``, ``/dev/shm`` and home are each
host's own too, so a ``file://`` rendezvous or a scratch file one host writes for another fails
here as well. Where bridges cannot be made (no ``ip`` command) the
hosts share one private loopback instead. Without namespaces the rung runs *degraded*: paths
point into the work dir, the rendezvous moves to ``127.0.0.1`` on a free port, writes to the real
``/opt/ml`` are refused by the probe, and the record lists each adaptation (``rung_facts``:
``namespaces``, ``network``, ``hostnames`` say which of the three a run had).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pydantic import PositiveFloat

from harness.backends import orphans, toolkit
from harness.backends.base import Capabilities, Progress, RungOptions
from harness.backends.host_rung import HostPlan, HostRung, HostsEnded, HostSession
from harness.backends.hosts import (
    CHANNELS_FACT,
    PROBE_DIR,
    collect_failure,
    compiled_probe,
    record_received,
    s3_unsupported,
    write_host_tree,
)
from harness.record.run_record import RecordWriter, RunRecord
from harness.runtime import requirements, sandbox
from harness.runtime.hang_watch import DEFAULT_HANG_AFTER_S, HangWatch, hang_after
from harness.runtime.supervise import HostLaunch, Outcome, run_hosts
from harness.spec.host_contract import OPT_ML, HostContract, Machine, host_contract
from harness.spec.job import Distribution, JobSpec

#: Inherited variables that would leak one launcher's view into another's.
_INHERITED_NOISE = (
    "SM_",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_",
    "GROUP_RANK",
    "LOCAL_WORLD_SIZE",
    "HARNESS_",
)


@functools.cache
def _namespaces_unavailable() -> str | None:
    return sandbox.unavailable_reason()


@functools.cache
def _host_networks_unavailable() -> str | None:
    return sandbox.host_networks_unavailable_reason()


@functools.cache
def cuda_device_count() -> int:
    """GPUs torch sees here (asked in a child so the harness itself never imports torch)."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return int(out.stdout.strip() or 0)
    except (subprocess.SubprocessError, ValueError, OSError):
        return 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalOptions(RungOptions):
    #: Seconds without any rank's progress before the stacks are dumped and the job stopped.
    hang_after_s: PositiveFloat = DEFAULT_HANG_AFTER_S
    #: False runs the job without the probe (to measure its cost, or to rule it out).
    probe: bool = True


@dataclass
class LocalPlan(HostPlan):
    """The contract and the run's state: where the hosts' trees go, and whether namespaces hold them."""

    namespaced: bool = True
    #: Each host in its own network namespace (else, when namespaced, all in the run's one).
    host_networks: bool = True


class LocalBackend(HostRung[LocalPlan]):
    name = "local"
    capabilities = Capabilities(gpus=False, separate_hosts=False, containers=False, hang_detection=True)
    Options = LocalOptions
    options: LocalOptions

    def unavailable_reason(self) -> str | None:
        return None

    @classmethod
    def leftover_collectors(cls) -> tuple[Callable[[], list[str]], ...]:
        return (orphans.gc,)  # launchers re-parented to init, work dirs (orphans.WORK_PREFIXES)

    def unsupported_reason(self, job: JobSpec) -> str | None:
        if not job.is_script_mode:
            return "a bring-your-own image runs only on container rungs (docker, sagemaker-local)"
        return s3_unsupported(job)

    def _machine(self, network_interface: str) -> Machine:
        return Machine(
            num_cpus=os.cpu_count() or 1, num_gpus=0, network_interface=network_interface, python=sys.executable
        )

    def plan(self, job: JobSpec) -> LocalPlan:
        degraded = _namespaces_unavailable()
        shared = _host_networks_unavailable() if degraded is None else None
        host_networks = degraded is None and shared is None
        work = Path(tempfile.gettempdir()) / f"harness-{self.name}-{uuid.uuid4().hex[:8]}"  # orphans.WORK_PREFIXES
        interface = sandbox.HOST_INTERFACE if host_networks else "lo"
        machine = requirements.local_machine(job, self._machine(interface))  # the job's cached environment's python
        contracts: dict[str, HostContract] = {}
        for host in job.hosts:
            opt_ml = OPT_ML if degraded is None else PurePosixPath(work / host / "opt_ml")
            contracts[host] = host_contract(job, host, machine, opt_ml)
        facts: dict[str, object] = {
            "work_dir": str(work),
            "probe": "on" if self.options.probe else "off",
            "namespaces": f"none: {degraded}"
            if degraded is not None
            else "network, mount and hostname (UTS) namespaces per host"
            if host_networks
            else "mount and hostname (UTS) namespaces per host, one network namespace for the run",
            **_network_facts(job.hosts, degraded, shared),
            "opt_ml": "each host's tree mounted on /opt/ml"
            if degraded is None
            else "not emulated: paths point into the work dir; writes to /opt/ml are refused",
            "channels": CHANNELS_FACT.format(how="symbolic links to"),
            "gpus": "hidden (CUDA_VISIBLE_DEVICES='')" if machine.num_gpus == 0 else f"{machine.num_gpus} visible",
            "machine": {
                "num_cpus": machine.num_cpus,
                "num_gpus": machine.num_gpus,
                "network_interface": machine.network_interface,
            },
        }
        if job.is_script_mode and job.launcher == "toolkit":
            facts["toolkit"] = toolkit.EMULATED
        requirements.plan_fact(job, facts)
        if degraded is not None:
            facts["file_system"] = "shared: every host sees this machine's whole file system (no mount namespaces)"
            port = _free_port()
            facts["adapted"] = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
            contracts = {h: _degrade(c, port) for h, c in contracts.items()}
        return LocalPlan(
            self.name,
            job,
            contracts,
            facts,
            shared_network=not host_networks,
            work_dir=work,
            namespaced=degraded is None,
            host_networks=host_networks,
        )

    def session(self, plan: LocalPlan, record: RecordWriter) -> LocalSession:
        return LocalSession(plan, record, self.options)


class LocalSession(HostSession[LocalPlan]):
    """Each host a launcher process on this machine, in its own namespaces where it can be."""

    def __init__(self, plan: LocalPlan, record: RecordWriter, options: LocalOptions) -> None:
        super().__init__(plan, record)
        self.options = options
        self._network: sandbox.RunNetwork | None = None
        self._launches: list[HostLaunch] = []
        self._outcome = Outcome()

    def start(self) -> None:
        self.plan.work_dir.mkdir(parents=True)
        orphans.claim(self.plan.work_dir, self.record.manifest.run_id, self.record.root)
        if self.plan.namespaced:
            self._network = sandbox.RunNetwork(self.job.hosts if self.plan.host_networks else None).__enter__()

    def install_requirements(self) -> bool:
        return requirements.install_local(self.job, self.plan.hosts, self.record)

    def prepare_host(self, contract: HostContract, channels: dict[str, Path], tree: Path) -> None:
        job, record, work, network = self.job, self.record, self.plan.work_dir, self._network
        host = contract.host
        write_host_tree(job, contract, tree)
        for name, source in channels.items():
            (tree / "input" / "data" / name).symlink_to(source, target_is_directory=True)
        env = {
            **_host_env(contract, record.root if self.options.probe else None),
            orphans.RUN_ID_ENV: record.manifest.run_id,
        }  # how `harness gc` finds them if we die
        requirements.activate_local(job, env)
        record_received(record, contract, env)
        preexec = None
        cwd = Path(str(contract.cwd))
        if network is not None:
            hosts_path = work / host / "hosts"
            hosts_path.write_text(sandbox.hosts_file(job.hosts, network.addresses or None), encoding="utf-8")
            keep = _handed_to_job(env, [work, record.root, *channels.values()])
            own_dirs = {}
            for directory in sandbox.own_directories(env.get("HOME"), keep):
                backing = own_dirs[directory] = work / host / "own" / directory.strip("/").replace("/", "_")
                backing.mkdir(parents=True)
                backing.chmod(0o1777 if "tmp" in directory else 0o700)
            record.set_fact(
                "file_system",
                f"each host has its own {', '.join([*own_dirs, '/dev/shm'])} (empty at the start); the rest of this "
                "machine's file system outside /opt/ml is shared by the hosts",
            )
            preexec = network.host_entry(
                host=host,
                opt_ml=tree,
                hosts_path=hosts_path,
                overlay_dir=work / host / "overlay",
                cwd=str(contract.cwd),
                own_dirs=own_dirs,
                keep=keep,
            )
            cwd = tree / PurePosixPath(contract.cwd).relative_to(OPT_ML)  # same directory, seen from outside
        self._launches.append(HostLaunch(host, contract.command, env, cwd, record.host_dir(host) / "log.txt", preexec))

    def run_hosts(self, progress: Progress | None) -> HostsEnded:
        after = hang_after(self.options.hang_after_s, "hang_after_s" in self.options.model_fields_set, self.job.max_run)
        self.record.set_fact("hang_after_s", after)
        launches = self._launches
        self._outcome = run_hosts(
            launches,
            max_run_s=self.job.max_run,
            sink=progress,
            hang=HangWatch(self.record.root, after, logs=lambda: [launch.log_path for launch in launches]),
        )
        return HostsEnded(timed_out=self._outcome.timed_out, hung=self._outcome.hung)

    def collect_host(self, contract: HostContract, tree: Path) -> int:
        host, outcome = contract.host, self._outcome
        code = outcome.exit_codes[host]
        collect_failure(self.job, contract, tree, self.record, code, outcome.started_at[host], outcome.ended_at[host])
        return code

    def close(self) -> None:
        if self._network is not None:
            self._network.__exit__(None, None, None)
        shutil.rmtree(self.plan.work_dir, ignore_errors=True)


class SingleBackend(LocalBackend):
    """The job as a data scientist runs it before it goes distributed: one host, one process, no
    distribution, on this machine's CPU. A script that cannot run without a process group (it
    calls ``init_process_group`` whatever its launch, or reads a variable torchrun sets) fails at
    once ("environment variable RANK expected, but not set", ``KeyError: 'LOCAL_WORLD_SIZE'``);
    it is then run as ``torchrun --nproc_per_node 1`` would
    run it (world size 1), and the record says so. This is the baseline the ladder starts from:
    what a topology change must not change (artifacts, checkpoint structure, parsed
    hyperparameters) is compared with the distributed rungs; curves and weights only at an equal
    global batch, when the job names its per-process batch size (``batch_size_hyperparameter``),
    which this rung multiplies by the job's world size."""

    name = "single"

    def job_to_run(self, job: JobSpec) -> JobSpec:
        return single_process(job)

    def run_again(self, job: JobSpec, record: RunRecord) -> tuple[JobSpec, dict[str, str]] | None:
        if job.distribution != "torchrun" or not needs_process_group(record):
            return None
        why = (
            "under torchrun with one process (world size 1): "
            "run as a plain script it stopped for want of what torchrun sets (a process group's variables)"
        )
        return single_process(job, distribution="torchrun"), {"baseline": why}

    @classmethod
    def job_as_run(cls, job: JobSpec) -> JobSpec:
        return job if job.world_size == 1 else single_process(job)

    def check(self, job: JobSpec) -> None:
        super().check(single_process(job))

    def plan(self, job: JobSpec) -> LocalPlan:
        return super().plan(self.job_as_run(job))


#: A job stopped for want of what a launcher sets: torch's own message, or the job's reading a
#: variable torchrun sets (``os.environ["LOCAL_WORLD_SIZE"]``, as Lightning's examples do).
_NO_PROCESS_GROUP = re.compile(
    rb"environment variable (RANK|WORLD_SIZE|MASTER_ADDR|MASTER_PORT) expected, but not set"
    rb"|KeyError: '(LOCAL_RANK|RANK|GROUP_RANK|ROLE_RANK|LOCAL_WORLD_SIZE|WORLD_SIZE|GROUP_WORLD_SIZE"
    rb"|ROLE_WORLD_SIZE|MASTER_ADDR|MASTER_PORT|TORCHELASTIC_RUN_ID)'"
)


def needs_process_group(record: RunRecord) -> bool:
    """Whether the job failed because it was not launched with a process group's variables."""
    return record.status == "failed" and any(
        _NO_PROCESS_GROUP.search(record.host_log(host).read_bytes()) for host in record.hosts
    )


def single_process(job: JobSpec, distribution: Distribution = "none") -> JobSpec:
    """``job`` on one host in one process, its global batch kept where the job says how."""
    hyperparameters = dict(job.hyperparameters)
    key = job.batch_size_hyperparameter
    if key is not None:
        scaled = int(str(hyperparameters[key])) * job.world_size  # a whole number: the job spec checks it
        hyperparameters[key] = scaled if isinstance(hyperparameters[key], int) else str(scaled)
    return job.model_copy(
        update={
            "instance_count": 1,
            "processes_per_host": 1,
            "hyperparameters": hyperparameters,
            "distribution": distribution,
        }
    )


class LocalGpuBackend(LocalBackend):
    """The same as ``local`` on this machine's CUDA devices."""

    name = "local-gpu"
    capabilities = Capabilities(gpus=True, separate_hosts=False, containers=False, hang_detection=True)

    def unavailable_reason(self) -> str | None:
        if cuda_device_count() == 0:
            return "no CUDA device visible to torch on this machine"
        return None

    def _machine(self, network_interface: str) -> Machine:
        return Machine(
            num_cpus=os.cpu_count() or 1,
            num_gpus=cuda_device_count(),
            network_interface=network_interface,
            python=sys.executable,
        )


def _network_facts(hosts: list[str], degraded: str | None, shared: str | None) -> dict[str, str]:
    """The network model a run has, for the record: ``network`` and ``hostnames``."""
    if degraded is not None:
        return {
            "network": "none of its own: every host shares this machine's network, its loopback and ports",
            "hostnames": "algo-N do not resolve; the rendezvous uses 127.0.0.1",
        }
    if shared is not None:
        return {
            "network": "one network namespace for the run, loopback only, shared by every host: 127.0.0.1 and "
            f"ports are common to all hosts (no namespace per host: {shared})",
            "hostnames": "algo-N resolve to the run's private loopback",
        }
    addresses = sandbox.host_addresses(hosts)
    return {
        "network": f"one network namespace per host, bridged: {sandbox.HOST_INTERFACE} with "
        f"{', '.join(f'{host} at {address}' for host, address in addresses.items())}; 127.0.0.1 and ports are "
        "each host's own; nothing routes off this machine",
        "hostnames": "algo-N resolve to each host's address on the bridge",
    }


def _degrade(contract: HostContract, port: int) -> HostContract:
    """Without private namespaces algo-1 cannot resolve: rendezvous on loopback instead."""
    command = list(contract.command)
    if "--master_addr" in command:
        command[command.index("--master_addr") + 1] = "127.0.0.1"
        command[command.index("--master_port") + 1] = str(port)
    launcher_env = {**contract.launcher_env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    return HostContract(
        contract.host,
        contract.opt_ml,
        contract.files,
        contract.platform_env,
        launcher_env,
        command,
        contract.cwd,
        {**contract.facts, "degraded": True},
    )


def _handed_to_job(env: dict[str, str], paths: list[Path]) -> list[str]:
    """The paths the harness hands a host's processes, which must stay where they are however
    little of the machine the host shares: the interpreter and its environment, the harness's
    package (the probe), everything on ``PATH`` and ``PYTHONPATH``, the harness's own variables
    (the record a replay reads), and ``paths`` (the work dir, the record, the channels' sources)."""
    listed = [p for name in ("PATH", "PYTHONPATH") for p in env.get(name, "").split(os.pathsep)]
    listed += [value for name, value in env.items() if name.startswith("HARNESS_")]
    # A virtual environment's bin on PATH (the job's cached one) needs the whole environment.
    listed = [str(Path(p).parent) if (Path(p).parent / "pyvenv.cfg").is_file() else p for p in listed]
    interpreter = [sys.prefix, sys.base_prefix, sys.exec_prefix, str(PROBE_DIR.parent), *sys.path]
    return [p for p in (*map(str, paths), *interpreter, *listed) if os.path.isabs(p)]


def _host_env(contract: HostContract, probe_dir: Path | None) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_NOISE)}
    python_path = os.pathsep.join(
        p for p in (str(compiled_probe()), contract.env.get("PYTHONPATH"), inherited.get("PYTHONPATH")) if p
    )
    env = {
        **inherited,
        "PYTHONUNBUFFERED": "1",  # the PyTorch DLCs set it; without it logs arrive at exit
        **contract.env,
        "PATH": os.pathsep.join((os.path.dirname(sys.executable), inherited.get("PATH", os.defpath))),
        "PYTHONPATH": python_path,
        "HARNESS_HOST": contract.host,
    }
    if probe_dir is not None:
        env["HARNESS_PROBE_DIR"] = str(probe_dir)
    if contract.facts.get("degraded"):
        env["HARNESS_GUARD_OPT_ML"] = "1"
    if contract.env.get("SM_NUM_GPUS") == "0":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU rung hides GPUs, as a CPU instance has none
    return env
