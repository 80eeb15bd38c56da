"""One small interface for every rung.

The public flow is written once here (:meth:`Backend.run`: check → plan → record → execute →
collect → finish); a rung fills in :meth:`unavailable_reason`, :meth:`plan` and
:meth:`_execute`. Every rung can dry-run: :meth:`plan` builds the exact per-host contract and
launch commands without starting anything.
"""

from __future__ import annotations

import json
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from harness.errors import HarnessError, RungFailed, RungUnavailable, UsageError
from harness.record import log_metrics
from harness.record.archives import ARCHIVES
from harness.record.run_record import RecordFiles, RecordWriter, RunRecord, Status, new_run_id, write_json
from harness.spec import s3
from harness.spec.host_contract import HostContract
from harness.spec.s3 import S3Uri
from harness.spec.workload import Workload

Progress = Callable[[str, str], None]  # (host, line)


@dataclass(frozen=True)
class Capabilities:
    """What a rung can reproduce, so callers can reason about what a diff may show."""

    gpus: bool
    separate_hosts: bool  # each host its own machine/filesystem (vs processes sharing one)
    containers: bool
    #: Whether the rung can tell a job that stopped making progress (the probe's heartbeats) and
    #: dump its stacks before stopping it; without it a stuck job runs until ``max_run``.
    hang_detection: bool

    def describe(self) -> str:
        return ", ".join(name.replace("_", " ") for name, on in vars(self).items() if on) or "none"


class RungOptions(BaseModel):
    """A rung's settings. Each rung declares its own subclass; unknown keys are refused, so a
    setting given to a rung that does not have it is an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)


SpecT = TypeVar("SpecT", bound=Workload)


@dataclass
class Plan(Generic[SpecT]):
    """What a rung would do: printable (the dry-run) and then executed as is."""

    rung: str
    job: SpecT
    hosts: dict[str, HostContract]
    facts: dict[str, Any] = field(default_factory=dict)
    #: Whether the job's hosts share one network (one loopback, ports common to all), unlike
    #: SageMaker's instances: what ``harness bisect`` needs to know of a rung below another.
    shared_network: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "rung": self.rung,
            "facts": self.facts,
            "hosts": {
                name: {"command": c.command, "cwd": str(c.cwd), "env": c.env, "files": c.files}
                for name, c in self.hosts.items()
            },
        }

    def describe(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


PlanT = TypeVar("PlanT", bound=Plan[Any])


class Backend(ABC, Generic[SpecT, PlanT]):
    """A rung: one way of running a job, behind the same contract and record. ``SpecT`` is the
    workload it runs (:class:`~harness.spec.job.JobSpec` for training), ``PlanT`` the rung's own
    plan: the printable contract, plus the state its execution needs as typed fields."""

    name: ClassVar[str]
    #: The kind of job this rung runs (``Workload.kind``): the ladder refuses a rung for a job of another.
    workload: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    #: The settings this rung takes (``harness.backends.get_backend`` validates against it).
    Options: ClassVar[type[RungOptions]] = RungOptions
    #: Whether the harness uploads the record's artifacts to the job's ``output_path`` (the
    #: ``sagemaker`` rung's artifacts are uploaded by the service itself).
    uploads_artifacts: ClassVar[bool] = True

    def __init__(self, options: RungOptions | None = None) -> None:
        if options is not None and not isinstance(options, self.Options):
            raise TypeError(f"rung {self.name!r} takes {self.Options.__name__}, not {type(options).__name__}")
        self.options = options if options is not None else self.Options()

    @abstractmethod
    def unavailable_reason(self) -> str | None:
        """Why this rung cannot run on this machine at all, or None."""

    @classmethod
    def leftover_collectors(cls) -> tuple[Callable[[], list[str]], ...]:
        """What ``harness gc`` calls for this rung: each collector removes what runs of the rung
        whose harness is gone (``kill -9``, a runner's hard timeout) left on this machine, and
        returns a line per run. Rungs that leave the same kind of thing name the same collector;
        ``harness gc`` calls each once."""
        return ()

    def unsupported_reason(self, job: SpecT) -> str | None:
        """Why this rung cannot run this particular job, or None."""
        return None

    @classmethod
    def job_as_run(cls, job: SpecT) -> SpecT:
        """The job as this rung runs it: the same, but for a rung that runs another topology
        (``single``: one host, one process)."""
        return job

    @abstractmethod
    def plan(self, job: SpecT) -> PlanT:
        """The exact per-host contract and commands, without running anything."""

    @abstractmethod
    def _execute(self, plan: PlanT, record: RecordWriter, progress: Progress | None) -> Status:
        """Run the plan, writing logs and per-host results into ``record``."""

    def check(self, job: SpecT) -> None:
        """Raise :class:`RungUnavailable` (or :class:`JobSpecError`) before anything starts."""
        job.check_local_paths(f"job {job.name!r}")
        reason = self.unavailable_reason() or self.unsupported_reason(job)
        if reason:
            raise RungUnavailable(self.name, reason, hint="`harness doctor` says what each rung needs on this machine")

    def job_to_run(self, job: SpecT) -> SpecT:
        """The job this rung runs for ``job`` (``single``: on one host, in one process)."""
        return job

    def run_again(self, job: SpecT, record: RunRecord) -> tuple[SpecT, dict[str, str]] | None:
        """Where a run's record shows the rung must run the job otherwise (``single``: a script
        that stopped for want of torchrun's variables runs under torchrun), that job and the facts
        that say why; the first record is then replaced. None: the record stands."""
        return None

    def run(self, job: SpecT, records_dir: Path, *, progress: Progress | None = None) -> RunRecord:
        """Run ``job`` on this rung and return its complete record (also when the job fails)."""
        record = self._run(self.job_to_run(job), records_dir, progress, {})
        again = self.run_again(job, record)
        if again is None:
            return record
        shutil.rmtree(record.root)
        return self._run(again[0], records_dir, progress, again[1])

    def _run(self, job: SpecT, records_dir: Path, progress: Progress | None, facts: dict[str, str]) -> RunRecord:
        self.check(job)
        plan = self.plan(job)
        root = records_dir.resolve() / new_run_id(job.name, self.name)  # containers mount it: absolute
        if root.exists():
            raise UsageError(f"{root} already exists", hint="choose another --records directory")
        record = RecordWriter(root, job, self.name)
        record.start()
        # a harness killed from here on leaves a record that says where its run was
        record.update(rung_facts={**plan.facts, **facts})
        status: Status = "error"
        try:
            outcome = self._execute(plan, record, progress)
            if self.uploads_artifacts and job.output_path is not None:
                record.update(uploaded=upload_artifacts(record.root, job.output_path))
            status = outcome
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except HarnessError as exc:
            record.manifest.error = exc.message
            raise
        except Exception as exc:  # an engine, SDK or OS error: translated here, at the rung's boundary
            record.manifest.error = f"{type(exc).__name__}: {exc}"
            raise RungFailed(
                f"rung {self.name!r} broke down: {type(exc).__name__}: {exc}",
                hint=f"the record {root} keeps what ran until then",
            ) from exc
        finally:
            self._finish(job, record, status)
        return RunRecord.load(root)

    def _finish(self, job: SpecT, record: RecordWriter, status: Status) -> None:
        files = RecordFiles(record.root)
        sources = {host: files.host_log(host) for host in job.hosts}
        sources.update({f"rank-{rank}": path for rank, path in files.rank_logs().items()})
        write_json(record.root / "metrics.json", log_metrics.parse_logs(job.metric_definitions, sources))
        record.finish(status)


def upload_artifacts(record_root: Path, output_path: str) -> dict[str, str]:
    """The record's ``model.tar.gz`` and ``output.tar.gz`` to where SageMaker puts them:
    ``<output_path>/<training job name>/output/``. The run id stands for the training job name,
    so that rungs never overwrite each other's artifacts."""
    prefix = S3Uri.parse(output_path).join(record_root.name, "output")
    return {
        archive: s3.upload(record_root / "artifacts" / archive, prefix.join(archive))
        for archive in ARCHIVES.values()
        if (record_root / "artifacts" / archive).is_file()
    }
