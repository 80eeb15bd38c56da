"""harness: run one SageMaker-style training job through a ladder of environments and show
where and why its behaviour diverges."""

from harness._version import __version__
from harness.errors import HarnessError, JobSpecError, RecordError, RungFailed, RungUnavailable, UsageError
from harness.jobspec import Channel, JobSpec, MetricDefinition, load_job
from harness.record import RunRecord

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
