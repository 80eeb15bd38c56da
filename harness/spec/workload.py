"""What every kind of job gives the layers that are not its own: the common flow of a rung
(``Backend.run``), the record, the ladder and the verdict.

Training (:class:`harness.spec.job.JobSpec`) is the one workload today. Another (serving, say) is a
spec that has these members, the rungs that run it (``Backend.workload`` names its kind) and the
checks that judge it (``RunCheck.workload``, ``PairCheck.workload``); none of the training code
changes for it. The record keeps the kind (``manifest.workload``), so that a record is judged only
by the checks of its own workload.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, Self

if TYPE_CHECKING:
    from harness.spec.job import MetricDefinition


class Workload(Protocol):
    """A job of some kind, as the generic layers see it."""

    @property
    def kind(self) -> str:
        """The workload this spec is of (``training``): the rungs and checks that take it say the same."""

    @property
    def default_rungs(self) -> tuple[str, ...]:
        """The ladder climbed when no rungs are named, cheapest first."""

    @property
    def name(self) -> str:
        """What the runs are called (a record's run id starts with it)."""

    @property
    def hosts(self) -> list[str]:
        """The hosts a rung runs it on, ``algo-1`` first."""

    @property
    def output_path(self) -> str | None:
        """The S3 prefix the record's archives are uploaded to, as the platform would, or None."""

    @property
    def metric_definitions(self) -> Sequence[MetricDefinition]:
        """The metrics parsed from the logs into the record's ``metrics.json``."""

    def check_local_paths(self, where: str) -> None:
        """Raise ``JobSpecError`` for a local path the spec names that is not there."""

    def record_section(self) -> dict[str, Any]:
        """The spec as the record keeps it (``manifest.job``), secrets redacted."""

    def topology(self) -> dict[str, Any]:
        """How it is laid out over hosts and processes (``manifest.topology``)."""

    def with_changes(self, changes: Mapping[str, Any]) -> Self:
        """The same spec with some fields changed (a ladder step's overrides), validated again."""
