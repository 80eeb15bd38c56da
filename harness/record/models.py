"""The record's files as types: the manifest, which rungs write and readers read as a
:class:`Manifest` (``RecordWriter.manifest``, ``RunRecord.manifest``), checked before each write and
on reading, and the probe's process records (docs/run-record.md documents every field; a test
holds the page to these models).

Strict types: JSON has no coercion, so the string ``"4"`` is not a world size. Keys that are not
declared are kept as written (a newer harness's, a rung's), never refused.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Status = Literal["running", "succeeded", "failed", "timeout", "hung", "interrupted", "error"]
STATUSES: tuple[str, ...] = get_args(Status)


def json_kind(value: Any) -> str:
    """What a JSON value is, in words, for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__


class _Part(BaseModel):
    # validate_assignment: a rung that sets a part of the manifest gets the part's type (a dict it
    # gives becomes the model), and a value of the wrong type fails where it was set.
    model_config = ConfigDict(strict=True, extra="allow", validate_assignment=True)


class ChannelSection(_Part):
    """One channel of the job, as given (docs/job-spec.md)."""

    source: str
    content_type: str | None = None
    input_mode: str = "File"
    distribution: str = "FullyReplicated"


class JobSection(_Part):
    """The job as given (docs/job-spec.md), its environment's secret-looking values redacted: the
    fields the judge reads are declared here, the rest of the spec is kept as written."""

    name: str
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    entry_point: str | None = None
    instance_type: str | None = None
    distribution: str = "none"
    channels: dict[str, ChannelSection] = Field(default_factory=dict)
    max_run: int | None = None
    batch_size_hyperparameter: str | None = None
    environment: dict[str, str] = Field(default_factory=dict)


class Topology(_Part):
    """The hosts and processes the rung ran the job as (``single``: one host, one process)."""

    hosts: list[str]
    processes_per_host: int
    world_size: int
    distribution: str | None = None  # training: none or torchrun
    launcher: str | None = None  # training: toolkit or model-trainer


class HostResult(_Part):
    """How one host's launcher ended."""

    exit_code: int | None = None
    started_at: str | None = None
    ended_at: str | None = None
    failure_reason: str | None = None
    failure_written_by: str | None = None

    @property
    def failed(self) -> bool:
        """The launcher ended with an exit code other than 0 (a host still running has none)."""
        return self.exit_code not in (0, None)


class RankResult(_Part):
    """How one rank's process ended, from the probe's process record."""

    host: str | None = None
    pid: int | None = None
    local_rank: int | str | None = None  # the launcher's LOCAL_RANK, as some write it: a string
    ended_at: str | None = None
    ended_at_from: str | None = None
    exception: str | None = None


class ArchiveResult(_Part):
    """One of the record's ``artifacts/`` archives: how many files it holds, which names clashed."""

    files: int = 0
    clashes: dict[str, Any] = Field(default_factory=dict)


class CheckpointsResult(_Part):
    """What the job's ``checkpoint_s3_uri`` held after the run."""

    s3_uri: str
    files: dict[str, list[str]]
    clashes: dict[str, list[str]]
    clashes_with_different_content: list[str] = Field(default_factory=list)


class Manifest(_Part):
    """``manifest.json``: one run, written from before its first process starts until it ends.
    The writer sets its parts as typed values (``RecordWriter.update``); readers get it typed
    (``RunRecord.manifest``). Keys with a default are left out of the file until a rung sets them."""

    format_version: int
    harness_version: str
    run_id: str
    rung: str
    #: The kind of job (``training``): a record is judged by the checks of its own workload.
    #: Records written before workloads had kinds are training's.
    workload: str = "training"
    job: JobSection
    topology: Topology
    started_at: str
    ended_at: str | None
    status: Status
    complete: bool
    hosts: dict[str, HostResult]
    ranks: dict[str, RankResult]
    rung_facts: dict[str, Any]
    artifacts: dict[str, ArchiveResult] = Field(default_factory=dict)
    artifacts_missing: dict[str, str] = Field(default_factory=dict)
    checkpoints: CheckpointsResult | None = None
    uploaded: dict[str, str] = Field(default_factory=dict)
    error: str | None = None

    @field_validator("ranks")
    @classmethod
    def _ranks_by_number(cls, ranks: dict[str, RankResult]) -> dict[str, RankResult]:
        if any(not key.isdigit() for key in ranks):
            raise ValueError(f"keys must be rank numbers, got {sorted(ranks)[:3]}")
        return ranks

    def failed_hosts(self) -> dict[str, HostResult]:
        """The hosts whose launcher ended with an exit code other than 0."""
        return {host: result for host, result in self.hosts.items() if result.failed}

    def as_file(self) -> dict[str, Any]:
        """The manifest as its file holds it: the keys set so far (a default no rung set stays out)."""
        return self.model_dump(exclude_unset=True)


class ProcessRecord(_Part):
    """``processes/<host>-<pid>.json``: one Python process the probe saw."""

    host: str
    pid: int


#: Pydantic's error types, as what was expected.
_EXPECTED = {
    "int_type": "an integer",
    "string_type": "a string",
    "bool_type": "true or false",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "a list",
}


def parse_manifest(manifest: dict[str, Any]) -> Manifest | list[str]:
    """The manifest, typed; or what is wrong with it, as ``key: problem`` lines."""
    try:
        parsed = Manifest.model_validate(manifest)
    except ValidationError as exc:
        return said(exc)
    if not parsed.topology.hosts:
        return ["topology.hosts: expected at least one host, got an empty list"]
    return parsed


def manifest_problems(manifest: dict[str, Any]) -> list[str]:
    """What is wrong with a manifest, as ``key: problem`` lines (none: it is fine)."""
    parsed = parse_manifest(manifest)
    return [] if isinstance(parsed, Manifest) else parsed


def process_problems(process: dict[str, Any]) -> list[str]:
    """What is wrong with a process record, as ``key: problem`` lines."""
    try:
        ProcessRecord.model_validate(process)
    except ValidationError as exc:
        return said(exc)
    return []


def said(exc: ValidationError) -> list[str]:
    """Pydantic's errors as ``key: problem`` lines, in words."""
    return [_said(error) for error in exc.errors()]


def _said(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "missing":
        return f"{where}: missing"
    if kind == "literal_error":
        return f"{where}: expected one of {', '.join(STATUSES)}, got {json_kind(error['input'])}"
    if kind == "value_error":
        return f"{where}: {error['ctx']['error']}"
    expected = _EXPECTED.get(kind, error["msg"].lower())
    return f"{where}: expected {expected}, got {json_kind(error['input'])}"
