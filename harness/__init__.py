"""harness: run one SageMaker-style training job through a ladder of environments and show
where and why its behaviour diverges."""

__version__ = "0.1.0"

from harness.errors import HarnessError, JobSpecError, RecordError, RungFailed, RungUnavailable, UsageError  # noqa: E402
from harness.jobspec import Channel, JobSpec, MetricDefinition, load_job  # noqa: E402
from harness.record import RunRecord  # noqa: E402

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
