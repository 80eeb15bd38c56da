"""The job spec: one training job, described once, run on every rung.

A job is what a team would submit to SageMaker, in the words SageMaker uses: script mode
(``source_dir`` + ``entry_point`` run on a base ``image``) or bring-your-own image (its ``train``
program), hyperparameters, channels, instance count and type, distribution, environment, metric
definitions, ``max_run`` and a checkpoint location. It comes from a YAML file
(:func:`load_job`), from Python (:class:`JobSpec` directly) or from a boto3
``create_training_job`` request (:mod:`harness.spec.request`).

Validation is strict on purpose: an unknown key or a wrong type is an error naming the file, the
key and what was expected, never a silently ignored option.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from harness.errors import JobSpecError
from harness.spec.s3 import S3Uri

HyperparameterValue = bool | int | float | str | list[Any] | dict[str, Any]

#: Which launcher inside the container turns the platform's files into a process: the SageMaker
#: training toolkit of the deep learning containers, or the SDK v3 ``ModelTrainer`` drivers.
Launcher = Literal["toolkit", "model-trainer"]
Distribution = Literal["none", "torchrun"]

_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")  # SageMaker's TrainingJobName pattern
#: What a valid name is, in words: errors say this, never the regular expression.
NAME_RULE = "letters, digits and hyphens, starting and ending with a letter or digit, at most 63 characters"


def _valid_name(what: str, source: str = "") -> Callable[[str], str]:
    def check(name: str) -> str:
        if len(name) > 63 or not _NAME.fullmatch(name):
            problem = f"is {len(name)} characters long" if len(name) > 63 else "is not valid"
            raise ValueError(f"{what} {name!r} {problem}: use {NAME_RULE}{source}")
        return name

    return check


#: A training job's name: SageMaker's ``TrainingJobName`` rule.
JobName = Annotated[str, AfterValidator(_valid_name("the name", " (SageMaker's TrainingJobName rule)"))]
#: A channel's name: the same rule (stricter than SageMaker's ``ChannelName``, which also allows
#: ``.`` and ``_``: the name becomes a directory and an ``SM_CHANNEL_*`` variable).
ChannelName = Annotated[str, AfterValidator(_valid_name("the channel name"))]


def _s3_uri(uri: str) -> str:
    S3Uri.parse(uri)  # a ValueError names the URI and the expected form
    return uri


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class Channel(_Strict):
    """One input channel, as ``InputDataConfig`` describes it."""

    source: str = Field(description="Local directory (relative to the job file) or s3:// URI.")
    content_type: str | None = None
    input_mode: Literal["File", "FastFile"] = "File"
    distribution: Literal["FullyReplicated", "ShardedByS3Key"] = "FullyReplicated"

    @field_validator("source")
    @classmethod
    def _s3_uri_well_formed(cls, source: str) -> str:
        return _s3_uri(source) if source.startswith("s3:") else source  # "s3:/x" is a typo, not a path

    @property
    def is_s3(self) -> bool:
        return self.source.startswith("s3://")


class MetricDefinition(_Strict):
    """A metric parsed from the job's logs, exactly as SageMaker's ``MetricDefinitions``."""

    name: Annotated[str, Field(min_length=1, max_length=255)]
    regex: Annotated[str, Field(min_length=1, max_length=500)]

    @field_validator("regex")
    @classmethod
    def _compiles_with_one_group(cls, regex: str) -> str:
        try:
            compiled = re.compile(regex)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        if compiled.groups < 1:
            raise ValueError("needs one capture group around the value, e.g. 'loss=([0-9.]+)'")
        return regex


class Checkpoint(_Strict):
    """``CheckpointConfig``: where the job writes checkpoints and where they are synced."""

    local_path: str = "/opt/ml/checkpoints"
    s3_uri: str | None = None

    @field_validator("s3_uri")
    @classmethod
    def _s3_uri_well_formed(cls, uri: str | None) -> str | None:
        return None if uri is None else _s3_uri(uri)


class JobSpec(_Strict):
    """One SageMaker-style training job; the single input of every training rung (a
    :class:`harness.spec.workload.Workload` of kind ``training``)."""

    kind: ClassVar[str] = "training"
    default_rungs: ClassVar[tuple[str, ...]] = ("single", "local", "local-gpu", "docker", "sagemaker-local")

    name: JobName
    source_dir: Path | None = None
    entry_point: str | None = None
    image: str | None = Field(
        default=None,
        description="Script mode: the base image container rungs run the entry point on. "
        "Without entry_point: a bring-your-own image whose `train` program is the job.",
    )
    hyperparameters: dict[str, HyperparameterValue] = Field(default_factory=dict)
    channels: dict[ChannelName, Channel] = Field(default_factory=dict)
    instance_count: PositiveInt = 1
    instance_type: str = "ml.m5.xlarge"
    processes_per_host: PositiveInt = 1
    distribution: Distribution = "none"
    launcher: Launcher = "toolkit"
    environment: dict[str, str] = Field(default_factory=dict)
    metric_definitions: list[MetricDefinition] = Field(default_factory=list)
    max_run: PositiveInt = 86400
    checkpoint: Checkpoint | None = None
    batch_size_hyperparameter: str | None = Field(
        default=None,
        description="The hyperparameter holding the per-process batch size: the single-process baseline rung "
        "multiplies it by the world size, so that its loss curve and weights can be compared with a distributed "
        "run's at an equal global batch.",
    )
    output_path: str | None = Field(
        default=None,
        description="S3OutputPath: every rung uploads model.tar.gz and output.tar.gz under "
        "<output_path>/<training job name>/output/.",
    )

    @field_validator("output_path")
    @classmethod
    def _output_is_s3(cls, uri: str | None) -> str | None:
        return None if uri is None else _s3_uri(uri)

    @field_validator("instance_type")
    @classmethod
    def _sagemaker_instance_type(cls, value: str) -> str:
        if not value.startswith("ml."):
            raise ValueError(f"expected a SageMaker instance type such as 'ml.m5.xlarge', got {value!r}")
        return value

    @field_validator("environment")
    @classmethod
    def _valid_env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
        return env

    @model_validator(mode="after")
    def _script_or_image(self) -> JobSpec:
        if self.entry_point is None and self.image is None:
            raise ValueError("give entry_point (script mode) or image (bring-your-own image)")
        if self.entry_point is not None and self.source_dir is None:
            raise ValueError("entry_point needs source_dir, the directory that holds it")
        batch = self.batch_size_hyperparameter
        if batch is not None and not isinstance(self.hyperparameters.get(batch), int | str):
            raise ValueError(f"batch_size_hyperparameter {batch!r} names no hyperparameter of the job")
        if batch is not None and not str(self.hyperparameters[batch]).isdigit():
            value = self.hyperparameters[batch]
            raise ValueError(f"batch_size_hyperparameter {batch!r} is {value!r}, not a whole number")
        if self.distribution == "none" and self.processes_per_host > 1:
            raise ValueError(
                "processes_per_host > 1 needs distribution: torchrun "
                "(without a distribution SageMaker starts one process per host)"
            )
        hyphenated = [name for name in self.channels if "-" in name]
        if self.is_script_mode and self.launcher == "model-trainer" and hyphenated:
            raise ValueError(
                f"channel {hyphenated[0]!r}: ModelTrainer's drivers export SM_CHANNEL_"
                f"{hyphenated[0].upper()}, which bash refuses (not a valid identifier), and the job fails "
                "with exit 1 on SageMaker (docs/toolkit.md); name the channel without hyphens"
            )
        return self

    @property
    def world_size(self) -> int:
        """Processes the job runs in total when every rung keeps the target topology."""
        return self.instance_count * self.processes_per_host

    @property
    def hosts(self) -> list[str]:
        """SageMaker's host names, sorted as in ``resourceconfig.json``."""
        return [f"algo-{i}" for i in range(1, self.instance_count + 1)]

    def record_section(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def topology(self) -> dict[str, Any]:
        return {
            "hosts": self.hosts,
            "processes_per_host": self.processes_per_host,
            "world_size": self.world_size,
            "distribution": self.distribution,
            "launcher": self.launcher,
        }

    def with_changes(self, changes: Mapping[str, Any]) -> JobSpec:
        return JobSpec.model_validate({**self.model_dump(), **changes}) if changes else self

    @property
    def is_script_mode(self) -> bool:
        return self.entry_point is not None

    @property
    def uses_s3(self) -> bool:
        """Whether a rung needs S3 for this job: channels, output path or checkpoint location."""
        return (
            any(channel.is_s3 for channel in self.channels.values())
            or self.output_path is not None
            or (self.checkpoint is not None and self.checkpoint.s3_uri is not None)
        )

    def check_local_paths(self, origin: str, locate: Locate | None = None) -> None:
        """Raise :class:`JobSpecError` for local paths that do not exist (before anything runs);
        ``locate`` names the keys in the user's terms (default: the job file's)."""
        key = locate or job_key
        if self.source_dir is not None:
            if not self.source_dir.is_dir():
                raise JobSpecError(
                    f"{origin}: {key(('source_dir',))}: {self.source_dir} is not a directory",
                    hint="paths in a job file are relative to the file itself"
                    if locate is None
                    else "pass --source-dir with a local checkout of the job's code",
                )
            script = self.source_dir / (self.entry_point or "")
            if not script.is_file():
                close = did_you_mean(
                    self.entry_point or "", [p.name for p in self.source_dir.iterdir() if p.suffix == ".py"]
                )
                raise JobSpecError(
                    f"{origin}: {key(('entry_point',))}: {self.entry_point!r} not found in {self.source_dir}{close}",
                    hint=f"{key(('entry_point',))} is a path relative to {key(('source_dir',))}",
                )
        for name, channel in self.channels.items():
            if not channel.is_s3 and not Path(channel.source).is_dir():
                raise JobSpecError(
                    f"{origin}: {key(('channels', name, 'source'))}: {channel.source} is not a directory",
                    hint="a channel is a local directory or an s3:// URI",
                )


#: Turns a location in the job spec (pydantic's ``loc``) into the key the user wrote: the job
#: file's own (``channels.train.source``) or, for a request, the request's field.
Locate = Callable[[tuple[Any, ...]], str]


def job_key(loc: tuple[Any, ...]) -> str:
    """``loc`` as a job file's key path: ``channels.train.source``, ``metric_definitions.0.regex``."""
    return ".".join(str(part) for part in loc if part != "[key]")


#: Where to look when a job does not validate.
SPEC_HINT = "docs/job-spec.md lists every key, its type and its default"


def job_from_mapping(
    data: Any, *, origin: str, base_dir: Path, locate: Locate | None = None, hint: str = SPEC_HINT
) -> JobSpec:
    """Validate a parsed job document; relative paths resolve against ``base_dir``. ``locate``
    names a key in the user's terms and ``hint`` says where they are documented (a request's
    fields, for :mod:`harness.spec.request`)."""
    if data is None:
        raise JobSpecError(f"{origin}: the job file is empty", hint=f"a job is a YAML mapping of keys; {SPEC_HINT}")
    if not isinstance(data, dict):
        raise JobSpecError(
            f"{origin}: expected a mapping of job keys (name: ..., entry_point: ...), got {_yaml_kind(data)}",
            hint=SPEC_HINT,
        )
    data = dict(data)
    if isinstance(data.get("source_dir"), str):
        data["source_dir"] = base_dir / data["source_dir"]
    channels = data.get("channels")
    if isinstance(channels, dict):
        data["channels"] = {name: _resolve_channel(spec, base_dir) for name, spec in channels.items()}
    try:
        job = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise JobSpecError(_describe(exc, origin, locate or job_key), hint=hint) from None
    job.check_local_paths(origin, locate)
    return job


def _yaml_kind(data: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(data), type(data).__name__
    )


def _resolve_channel(spec: Any, base_dir: Path) -> Any:
    """Accept ``name: path`` as shorthand and make local sources absolute."""
    if isinstance(spec, str):
        spec = {"source": spec}
    if isinstance(spec, dict) and isinstance(spec.get("source"), str):
        source = spec["source"]
        if not source.startswith("s3:"):
            spec = {**spec, "source": str((base_dir / source).resolve())}
    return spec


#: The types a hyperparameter may have, in words (one message, not one per member of the union).
_HYPERPARAMETER_TYPES = "a string, number, boolean, list or mapping"


def _describe(exc: ValidationError, origin: str, locate: Locate = job_key) -> str:
    lines: list[str] = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        if loc[:1] == ("hyperparameters",) and len(loc) > 2:  # one error per member of the union
            line = f"{origin}: {locate(loc[:2])}: expected {_HYPERPARAMETER_TYPES} (got {error.get('input')!r})"
            if line not in lines:
                lines.append(line)
            continue
        key = locate(loc) or "(job)"
        if error["type"] == "extra_forbidden":
            known = _known_keys(loc)
            close = did_you_mean(str(loc[-1]), known)
            message = f"unknown key{close}" if close else f"unknown key; expected one of: {', '.join(known)}"
        else:
            message = error["msg"].removeprefix("Value error, ")
            shown = error.get("input")
            scalar = shown is None or isinstance(shown, str | int | float | bool)
            if loc and scalar and error["type"] != "missing" and repr(shown) not in message:
                message += f" (got {shown!r})"
        lines.append(f"{origin}: {key}: {message}")
    return "\n".join(lines)


def did_you_mean(word: str, choices: list[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` to a misspelt ``word``, else ``""``."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = JobSpec
    if len(loc) >= 3 and loc[0] == "channels":
        model = Channel
    elif len(loc) >= 3 and loc[0] == "metric_definitions":
        model = MetricDefinition
    elif len(loc) >= 2 and loc[0] == "checkpoint":
        model = Checkpoint
    return list(model.model_fields)


def load_job(path: Path) -> JobSpec:
    """Read and validate a YAML job file."""
    return job_from_mapping(read_job_file(path), origin=str(path), base_dir=path.resolve().parent)


def read_job_file(path: Path) -> Any:
    """A job file's YAML, parsed; :class:`JobSpecError` where it cannot be read or is not YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobSpecError(f"{path}: no such job file", hint="pass the path of a job's YAML file") from None
    except IsADirectoryError:
        inside = path / "job.yaml"
        raise JobSpecError(
            f"{path}: a directory, not a job file",
            hint=f"did you mean {inside}?" if inside.is_file() else "pass the path of a job's YAML file",
        ) from None
    except UnicodeDecodeError:
        raise JobSpecError(f"{path}: not a job file (not UTF-8 text)", hint="a job file is YAML") from None
    except OSError as exc:
        raise JobSpecError(
            f"{path}: cannot read the job file: {exc.strerror or exc}", hint="check the path and its permissions"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise JobSpecError(f"{path}{where}: not valid YAML: {problem}", hint=SPEC_HINT) from None
    return data
