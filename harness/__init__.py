"""harness: run one SageMaker-style training job through a ladder of environments and show
where and why its behaviour diverges."""

from harness._version import __version__
from harness.errors import HarnessError, JobSpecError, RecordError, RungFailed, RungUnavailable, UsageError
from harness.record.run_record import RunRecord
from harness.spec.job import Channel, JobSpec, MetricDefinition, load_job

__all__ = [
    "Channel",
    "HarnessError",
    "JobSpec",
    "JobSpecError",
    "MetricDefinition",
    "RecordError",
    "RunRecord",
    "RungFailed",
    "RungUnavailable",
    "UsageError",
    "__version__",
    "load_job",
]
