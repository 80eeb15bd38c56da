"""The record's files as types: the manifest, which ``RecordWriter`` checks before each write and
``RunRecord.load`` on reading, and the probe's process records (docs/run-record.md documents
every field; a test holds the page to these models).

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
    model_config = ConfigDict(strict=True, extra="allow")


class JobSection(_Part):
    """The job as given (docs/job-spec.md), its environment's secret-looking values redacted."""

    name: str
    hyperparameters: dict[str, Any]


class Topology(_Part):
    """The hosts and processes the rung ran the job as (``single``: one host, one process)."""

    hosts: list[str]
    processes_per_host: int
    world_size: int
    distribution: str
    launcher: str


class HostResult(_Part):
    """How one host's launcher ended."""

    exit_code: int | None = None
    started_at: str | None = None
    ended_at: str | None = None
    failure_reason: str | None = None
    failure_written_by: str | None = None


class RankResult(_Part):
    """How one rank's process ended, from the probe's process record."""

    host: str | None = None
    pid: int | None = None
    local_rank: int | str | None = None  # the launcher's LOCAL_RANK, as some write it: a string
    ended_at: str | None = None
    exception: str | None = None


class ArchiveResult(_Part):
    """One of the record's ``artifacts/`` archives: how many files it holds, which names clashed."""

    files: int = 0
    clashes: dict[str, Any] = Field(default_factory=dict)


class CheckpointsResult(_Part):
    """What the job's ``checkpoint_s3_uri`` held after the run."""

    s3_uri: str
    files: dict[str, Any]
    clashes: dict[str, Any]


class Manifest(_Part):
    """``manifest.json``: one run, written from before its first process starts until it ends."""

    format_version: int
    harness_version: str
    run_id: str
    rung: str
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
    checkpoints: CheckpointsResult | None = None
    uploaded: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None

    @field_validator("ranks")
    @classmethod
    def _ranks_by_number(cls, ranks: dict[str, RankResult]) -> dict[str, RankResult]:
        if any(not key.isdigit() for key in ranks):
            raise ValueError(f"keys must be rank numbers, got {sorted(ranks)[:3]}")
        return ranks


class ProcessRecord(_Part):
    """``processes/<host>-<pid>.json``: one Python process the probe saw."""

    host: str
    pid: int


#: What a reader cannot do without: a manifest written by hand (a test's, a benchmark's) may hold
#: only these; every other key is checked when it is there (``RunRecord.load(strict=False)``).
ESSENTIAL = ("format_version", "rung", "status", "topology", "topology.hosts")

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


def manifest_problems(manifest: dict[str, Any], *, strict: bool = True) -> list[str]:
    """What is wrong with a manifest, as ``key: problem`` lines (none: it is fine); without
    ``strict`` only the :data:`ESSENTIAL` keys must be there."""
    try:
        Manifest.model_validate(manifest)
    except ValidationError as exc:
        return [_said(error) for error in exc.errors() if strict or not _optional_here(error)]
    if strict and not manifest["topology"]["hosts"]:
        return ["topology.hosts: expected at least one host, got an empty list"]
    return []


def process_problems(process: dict[str, Any]) -> list[str]:
    """What is wrong with a process record, as ``key: problem`` lines."""
    try:
        ProcessRecord.model_validate(process)
    except ValidationError as exc:
        return [_said(error) for error in exc.errors()]
    return []


def _optional_here(error: Any) -> bool:
    return error["type"] == "missing" and ".".join(str(part) for part in error["loc"]) not in ESSENTIAL


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
