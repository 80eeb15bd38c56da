"""A rung of the host family in one module: each host a plain process of this machine, nothing
isolated, ``/opt/ml`` paths pointing into the run's work dir. It is what docs/architecture.md
promises a new host rung costs (a Kubeflow rung, say): a plan and a session; the template
(:class:`harness.backends.host_rung.HostRung`) does the rest. Registered in-process by
tests/test_host_rung.py; one host only, as its hosts share this machine's network and
``algo-1`` does not resolve here."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path, PurePosixPath

from harness.backends.base import Capabilities, Progress
from harness.backends.host_rung import HostPlan, HostRung, HostsEnded, HostSession
from harness.backends.hosts import collect_failure, compiled_probe, record_received, write_host_tree
from harness.record.run_record import RecordWriter
from harness.runtime import requirements
from harness.runtime.supervise import HostLaunch, Outcome, run_hosts
from harness.spec.host_contract import HostContract, Machine, host_contract
from harness.spec.job import JobSpec


class PlainHostsRung(HostRung[HostPlan]):
    name = "plain-hosts"
    capabilities = Capabilities(gpus=False, separate_hosts=False, containers=False, hang_detection=False)

    def unavailable_reason(self) -> str | None:
        return None

    def unsupported_reason(self, job: JobSpec) -> str | None:
        return None if job.instance_count == 1 else "one host only: the hosts would share this machine's network"

    def plan(self, job: JobSpec) -> HostPlan:
        work = Path(tempfile.gettempdir()) / f"harness-plain-{uuid.uuid4().hex[:8]}"
        machine = Machine(num_cpus=os.cpu_count() or 1, num_gpus=0, network_interface="lo", python=sys.executable)
        hosts = {host: host_contract(job, host, machine, PurePosixPath(work / host / "opt_ml")) for host in job.hosts}
        return HostPlan(self.name, job, hosts, {"work_dir": str(work), "probe": "on"}, work_dir=work)

    def session(self, plan: HostPlan, record: RecordWriter) -> PlainHosts:
        return PlainHosts(plan, record)


class PlainHosts(HostSession[HostPlan]):
    def __init__(self, plan: HostPlan, record: RecordWriter) -> None:
        super().__init__(plan, record)
        self.launches: list[HostLaunch] = []
        self.outcome = Outcome()

    def start(self) -> None:
        self.plan.work_dir.mkdir(parents=True)

    def install_requirements(self) -> bool:
        return requirements.install_local(self.job, self.plan.hosts, self.record)

    def prepare_host(self, contract: HostContract, channels: dict[str, Path], tree: Path) -> None:
        write_host_tree(self.job, contract, tree)
        for name, source in channels.items():
            (tree / "input" / "data" / name).symlink_to(source, target_is_directory=True)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "HARNESS_"))}
        env = {
            **inherited,
            **contract.env,
            "PYTHONUNBUFFERED": "1",
            "PATH": os.pathsep.join((os.path.dirname(sys.executable), inherited.get("PATH", os.defpath))),
            "PYTHONPATH": str(compiled_probe()),
            "HARNESS_PROBE_DIR": str(self.record.root),
            "HARNESS_HOST": contract.host,
            "CUDA_VISIBLE_DEVICES": "",
        }
        record_received(self.record, contract, env)
        log = self.record.host_dir(contract.host) / "log.txt"
        self.launches.append(HostLaunch(contract.host, contract.command, env, Path(str(contract.cwd)), log))

    def run_hosts(self, progress: Progress | None) -> HostsEnded:
        self.outcome = run_hosts(self.launches, max_run_s=self.job.max_run, sink=progress)
        return HostsEnded(timed_out=self.outcome.timed_out, hung=self.outcome.hung)

    def collect_host(self, contract: HostContract, tree: Path) -> int:
        host, outcome = contract.host, self.outcome
        code = outcome.exit_codes[host]
        collect_failure(self.job, contract, tree, self.record, code, outcome.started_at[host], outcome.ended_at[host])
        return code

    def close(self) -> None:
        shutil.rmtree(self.plan.work_dir, ignore_errors=True)
