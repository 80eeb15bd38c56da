"""The host family: rungs whose hosts the harness starts itself (``local``, ``local-gpu``,
``docker``; a Kubeflow rung next). The phases and their order are this template's, so that the
rungs cannot drift apart in what they do around the job: start the run's resources, stage the
channels, install ``requirements.txt``, write each host's ``/opt/ml`` tree, restore checkpoints,
run the hosts until every one has ended (or ``max_run``, a hang or a signal stops them), save
checkpoints, collect each host's exit code and failure, pack the artifacts, read the ranks'
ledgers, map all that to a status, and remove what the run made, however it ended.

A rung says only how its hosts run, in a :class:`HostSession`: one run's hosts, owning what
they need (a work dir, networks, containers). docs/architecture.md shows a rung of this family
in one module and one registration.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from harness.backends.base import Backend, Plan, Progress
from harness.backends.hosts import (
    artifact_overview,
    ranks_from_probe,
    restore_checkpoints,
    save_checkpoints,
    stage_channels,
)
from harness.record import archives
from harness.record.run_record import RecordWriter, Status
from harness.spec.host_contract import HostContract
from harness.spec.job import JobSpec


@dataclass
class HostPlan(Plan[JobSpec]):
    """A host rung's plan: the contract, and the work dir that holds the hosts' trees."""

    work_dir: Path = Path()


HostPlanT = TypeVar("HostPlanT", bound=HostPlan)


@dataclass
class HostsEnded:
    """How the hosts' run ended, when the rung stopped them: for ``max_run`` or for a hang."""

    timed_out: bool = False
    hung: bool = False


class HostSession(ABC, Generic[HostPlanT]):
    """One run's hosts on one rung. What it makes is its own, and :meth:`close` removes it, also
    after a failure, a timeout or a signal in any phase (``start`` included)."""

    def __init__(self, plan: HostPlanT, record: RecordWriter) -> None:
        self.plan, self.record, self.job = plan, record, plan.job

    def start(self) -> None:
        """Make what the hosts share before anything is staged (a network, an image)."""

    @abstractmethod
    def install_requirements(self) -> bool:
        """Install the job's ``requirements.txt`` as its launcher would; False where pip failed
        (recorded as the launchers record it, no host started)."""

    @abstractmethod
    def prepare_host(self, contract: HostContract, channels: dict[str, Path], tree: Path) -> None:
        """Write the host's ``/opt/ml`` tree (``hosts.write_host_tree``), what it ``received``,
        and whatever the host needs to start; start nothing yet."""

    @abstractmethod
    def run_hosts(self, progress: Progress | None) -> HostsEnded:
        """Start every host and supervise them until each has ended; stop them all at
        ``max_run``, on a hang or on a signal (raised again once they are stopped)."""

    @abstractmethod
    def collect_host(self, contract: HostContract, tree: Path) -> int:
        """The host's exit code, with its result and failure written into the record."""

    def collected(self) -> None:
        """After every host is collected: what the rung records of the run as a whole."""

    @abstractmethod
    def close(self) -> None:
        """Remove everything the run made (processes, containers, networks, the work dir)."""


class HostRung(Backend[JobSpec, HostPlanT]):
    """A rung of the host family: :meth:`session` is all it adds to a plan."""

    workload = "training"

    @abstractmethod
    def session(self, plan: HostPlanT, record: RecordWriter) -> HostSession[HostPlanT]:
        """A session for this run's hosts; it makes nothing until :meth:`HostSession.start`."""

    def _execute(self, plan: HostPlanT, record: RecordWriter, progress: Progress | None) -> Status:
        job = plan.job
        session = self.session(plan, record)
        try:
            session.start()
            channels = stage_channels(job, plan.work_dir, record)
            if not session.install_requirements():
                return "failed"
            trees = {host: plan.work_dir / host / "opt_ml" for host in plan.hosts}
            for host, contract in plan.hosts.items():
                session.prepare_host(contract, channels[host], trees[host])
            restore_checkpoints(job, trees)
            ended = session.run_hosts(progress)
            save_checkpoints(job, trees, record)
            codes = {host: session.collect_host(contract, trees[host]) for host, contract in plan.hosts.items()}
            session.collected()
            record.update(
                artifacts=artifact_overview(archives.collect(trees, record.root)), ranks=ranks_from_probe(record.root)
            )
        finally:
            session.close()
        if ended.hung:
            return "hung"
        if ended.timed_out:
            return "timeout"
        return "succeeded" if all(code == 0 for code in codes.values()) else "failed"
