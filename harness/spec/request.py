"""Import a job from a boto3 ``create_training_job`` request, the form teams already keep in
their Airflow DAGs and scripts (``harness ladder --from-request request.json``).

The request's ``HyperParameters`` are the strings the SDK sent; they are decoded the way the
training toolkit decodes them (``json.loads``, else the raw string), and the ``sagemaker_*``
keys that SDK v2 adds become the job's entry point and distribution again.

Errors name the request's own fields (``ResourceConfig.InstanceCount``,
``InputDataConfig[1].DataSource.S3DataSource.S3Uri``), never the job spec's keys the request
was turned into: the user wrote the request, not the job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.errors import JobSpecError
from harness.spec.job import JobSpec, did_you_mean, job_from_mapping

_HINT = "the request is what boto3's create_training_job takes (CreateTrainingJob in the SageMaker API reference)"

#: The fields of a request the harness reads, per object (a key close to one of them but not one
#: is a typo, refused with a "did you mean"); other fields of the API are accepted and ignored.
_READ = {
    "": [
        "TrainingJobName",
        "HyperParameters",
        "AlgorithmSpecification",
        "InputDataConfig",
        "OutputDataConfig",
        "ResourceConfig",
        "StoppingCondition",
        "CheckpointConfig",
        "Environment",
    ],
    "AlgorithmSpecification": ["TrainingImage", "MetricDefinitions", "TrainingInputMode"],
    "ResourceConfig": ["InstanceType", "InstanceCount", "VolumeSizeInGB"],
    "StoppingCondition": ["MaxRuntimeInSeconds"],
    "OutputDataConfig": ["S3OutputPath"],
    "CheckpointConfig": ["S3Uri", "LocalPath"],
    "Channel": ["ChannelName", "DataSource", "ContentType", "InputMode"],
    "DataSource": ["S3DataSource", "FileSystemDataSource"],
    "S3DataSource": ["S3Uri", "S3DataType", "S3DataDistributionType"],
    "FileSystemDataSource": ["DirectoryPath"],
    "MetricDefinition": ["Name", "Regex"],
}
#: Every other field CreateTrainingJob takes, per object: never mistaken for a typo.
_OTHERS = {
    "": [
        "RoleArn",
        "VpcConfig",
        "Tags",
        "EnableNetworkIsolation",
        "EnableInterContainerTrafficEncryption",
        "EnableManagedSpotTraining",
        "DebugHookConfig",
        "DebugRuleConfigurations",
        "TensorBoardOutputConfig",
        "ExperimentConfig",
        "ProfilerConfig",
        "ProfilerRuleConfigurations",
        "RetryStrategy",
        "RemoteDebugConfig",
        "InfraCheckConfig",
        "SessionChainingConfig",
    ],
    "AlgorithmSpecification": [
        "AlgorithmName",
        "EnableSageMakerMetricsTimeSeries",
        "ContainerEntrypoint",
        "ContainerArguments",
        "TrainingImageConfig",
    ],
    "ResourceConfig": ["VolumeKmsKeyId", "KeepAlivePeriodInSeconds", "InstanceGroups", "TrainingPlanArn"],
    "StoppingCondition": ["MaxWaitTimeInSeconds", "MaxPendingTimeInSeconds"],
    "OutputDataConfig": ["KmsKeyId", "CompressionType"],
    "Channel": ["CompressionType", "RecordWrapperType", "ShuffleConfig"],
    "DataSource": ["DatasetSource"],
    "S3DataSource": ["AttributeNames", "InstanceGroupNames", "ModelAccessConfig", "HubAccessConfig"],
    "FileSystemDataSource": ["FileSystemId", "FileSystemAccessMode", "FileSystemType"],
}


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value


class _Request:
    """A request being read: every field it takes is checked, and each field of the job built
    from it remembers the request field it came from (:meth:`locate`)."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.fields: dict[tuple[Any, ...], str] = {}  # job spec location -> request field

    def fail(self, where: str, problem: str, hint: str | None = _HINT) -> JobSpecError:
        return JobSpecError(f"{self.origin}: {where}: {problem}", hint=hint)

    def obj(self, node: Any, where: str, kind: str) -> dict[str, Any]:
        """``node`` as an object of the API's shape ``kind``; a misspelt field is an error."""
        if not isinstance(node, dict):
            raise self.fail(where or "(request)", f"expected an object, got {_kind(node)}")
        known = _READ.get(kind, []) + _OTHERS.get(kind, [])
        for key in node:
            close = did_you_mean(str(key), _READ.get(kind, [])) if key not in known else ""
            if close:
                raise self.fail(_join(where, key), f"not a field of CreateTrainingJob{close}")
        return node

    def get(
        self,
        node: dict[str, Any],
        where: str,
        key: str,
        kind: str | None = None,
        *,
        required: bool = False,
        default: Any = None,
    ) -> Any:
        """The field ``key`` of ``node`` (an object of shape ``kind`` when given), or ``default``."""
        if key not in node or node[key] is None:
            if required:
                raise self.fail(_join(where, key), "required by CreateTrainingJob, missing")
            return default
        return self.obj(node[key], _join(where, key), kind) if kind else node[key]

    def items(self, node: dict[str, Any], where: str, key: str, kind: str) -> list[tuple[str, dict[str, Any]]]:
        """The objects of the list field ``key``, each with its own path (``InputDataConfig[2]``)."""
        value = self.get(node, where, key, default=[])
        if not isinstance(value, list):
            raise self.fail(_join(where, key), f"expected a list, got {_kind(value)}")
        return [
            (f"{_join(where, key)}[{i}]", self.obj(v, f"{_join(where, key)}[{i}]", kind)) for i, v in enumerate(value)
        ]

    def locate(self, loc: tuple[Any, ...]) -> str:
        """The request field a job spec location came from (the longest known prefix)."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.fields:
                return self.fields[loc[:end]] + "".join(f".{part}" for part in loc[end:] if part != "[key]")
        return ".".join(str(part) for part in loc if part != "[key]")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _channel(req: _Request, where: str, entry: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    name = req.get(entry, where, "ChannelName", required=True)
    if not isinstance(name, str):
        raise req.fail(f"{where}.ChannelName", f"expected a string, got {_kind(name)}")
    source = req.get(entry, where, "DataSource", "DataSource", required=True)
    s3 = req.get(source, f"{where}.DataSource", "S3DataSource", "S3DataSource")
    fs = req.get(source, f"{where}.DataSource", "FileSystemDataSource", "FileSystemDataSource")
    req.fields[("channels", name)] = where
    req.fields[("channels", name, "[key]")] = f"{where}.ChannelName"
    req.fields[("channels", name, "content_type")] = f"{where}.ContentType"
    req.fields[("channels", name, "input_mode")] = f"{where}.InputMode"
    if s3 is not None:
        at = f"{where}.DataSource.S3DataSource"
        uri = req.get(s3, at, "S3Uri", required=True)
        distribution = req.get(s3, at, "S3DataDistributionType", default="FullyReplicated")
        req.fields[("channels", name, "source")] = f"{at}.S3Uri"
        req.fields[("channels", name, "distribution")] = f"{at}.S3DataDistributionType"
    elif fs is not None:
        at = f"{where}.DataSource.FileSystemDataSource"
        uri, distribution = req.get(fs, at, "DirectoryPath", required=True), "FullyReplicated"
        req.fields[("channels", name, "source")] = f"{at}.DirectoryPath"
    else:
        raise req.fail(
            f"{where}.DataSource", "needs S3DataSource or FileSystemDataSource (the ones the harness can serve)"
        )
    spec = {
        "source": uri.removeprefix("file://") if isinstance(uri, str) else uri,  # SDK local mode's local data
        "input_mode": req.get(entry, where, "InputMode", default="File"),
        "distribution": distribution,
    }
    if entry.get("ContentType"):
        spec["content_type"] = entry["ContentType"]
    return name, spec


def job_from_request(
    request: Any, *, origin: str, source_dir: Path | None = None, base_dir: Path | None = None
) -> JobSpec:
    """A :class:`JobSpec` from a ``CreateTrainingJob`` request; ``source_dir`` replaces an
    ``s3://`` ``sagemaker_submit_directory`` with the local checkout of the same code. Relative
    local paths are read from ``base_dir`` (default: the directory of ``origin``, a file)."""
    req = _Request(origin)
    if not isinstance(request, dict):
        raise JobSpecError(f"{origin}: expected a CreateTrainingJob request object, got {_kind(request)}", hint=_HINT)
    req.obj(request, "", "")
    raw_hps = req.get(request, "", "HyperParameters", default={})
    if not isinstance(raw_hps, dict):
        raise req.fail("HyperParameters", f"expected a map of strings, got {_kind(raw_hps)}")
    for key, value in raw_hps.items():
        if not isinstance(value, str):
            raise req.fail(
                f"HyperParameters.{key}",
                f"expected a string, as CreateTrainingJob sends every hyperparameter (got {_kind(value)})",
                hint=f'write the value as a string: "{key}": {json.dumps(json.dumps(value))}',
            )
    hps = {key: _decode(value) for key, value in raw_hps.items()}
    algorithm = req.get(request, "", "AlgorithmSpecification", "AlgorithmSpecification", default={})
    resources = req.get(request, "", "ResourceConfig", "ResourceConfig", default={})
    stopping = req.get(request, "", "StoppingCondition", "StoppingCondition", default={})
    output = req.get(request, "", "OutputDataConfig", "OutputDataConfig", default={})
    metrics = req.items(algorithm, "AlgorithmSpecification", "MetricDefinitions", "MetricDefinition")
    channels = [_channel(req, where, entry) for where, entry in req.items(request, "", "InputDataConfig", "Channel")]
    names = [name for name, _ in channels]
    twice = next((i for i, name in enumerate(names) if name in names[:i]), None)
    if twice is not None:
        raise req.fail(f"InputDataConfig[{twice}].ChannelName", f"{names[twice]!r} is given twice")
    for index, (where, metric) in enumerate(metrics):
        req.get(metric, where, "Name", required=True)
        req.get(metric, where, "Regex", required=True)
        req.fields[("metric_definitions", index)] = where
        req.fields[("metric_definitions", index, "name")] = f"{where}.Name"
        req.fields[("metric_definitions", index, "regex")] = f"{where}.Regex"
    req.fields.update(
        {
            ("name",): "TrainingJobName",
            ("image",): "AlgorithmSpecification.TrainingImage",
            ("hyperparameters",): "HyperParameters",
            ("channels",): "InputDataConfig",
            ("instance_count",): "ResourceConfig.InstanceCount",
            ("instance_type",): "ResourceConfig.InstanceType",
            ("environment",): "Environment",
            ("metric_definitions",): "AlgorithmSpecification.MetricDefinitions",
            ("max_run",): "StoppingCondition.MaxRuntimeInSeconds",
            ("output_path",): "OutputDataConfig.S3OutputPath",
            ("checkpoint",): "CheckpointConfig",
            ("checkpoint", "s3_uri"): "CheckpointConfig.S3Uri",
            ("checkpoint", "local_path"): "CheckpointConfig.LocalPath",
            ("distribution",): "HyperParameters.sagemaker_torch_distributed_enabled",
            ("processes_per_host",): "HyperParameters.sagemaker_mpi_num_of_processes_per_host",
            ("entry_point",): "HyperParameters.sagemaker_program",
            ("source_dir",): "--source-dir" if source_dir is not None else "HyperParameters.sagemaker_submit_directory",
            (): "(request)",
        }
    )
    data: dict[str, Any] = {
        "name": req.get(request, "", "TrainingJobName", required=True),
        "image": req.get(algorithm, "AlgorithmSpecification", "TrainingImage"),
        "hyperparameters": {k: v for k, v in hps.items() if not k.startswith("sagemaker_")},
        "channels": dict(channels),
        "instance_count": req.get(resources, "ResourceConfig", "InstanceCount", default=1),
        "instance_type": req.get(resources, "ResourceConfig", "InstanceType", default="ml.m5.xlarge"),
        "environment": req.get(request, "", "Environment", default={}),
        "metric_definitions": [{"name": m.get("Name"), "regex": m.get("Regex")} for _, m in metrics],
        "max_run": req.get(stopping, "StoppingCondition", "MaxRuntimeInSeconds", default=86400),
        "output_path": req.get(output, "OutputDataConfig", "S3OutputPath"),
    }
    checkpoint = req.get(request, "", "CheckpointConfig", "CheckpointConfig")
    if checkpoint:
        data["checkpoint"] = {
            "s3_uri": req.get(checkpoint, "CheckpointConfig", "S3Uri", required=True),
            "local_path": req.get(checkpoint, "CheckpointConfig", "LocalPath", default="/opt/ml/checkpoints"),
        }
    if hps.get("sagemaker_torch_distributed_enabled") is True:
        data["distribution"] = "torchrun"
        data["processes_per_host"] = hps.get("sagemaker_mpi_num_of_processes_per_host", 1)
    program = hps.get("sagemaker_program")
    if data["image"] is None and not program:
        raise req.fail(
            "AlgorithmSpecification.TrainingImage",
            "missing: a request without HyperParameters.sagemaker_program (script mode) needs a training image",
        )
    if program:
        data["entry_point"] = program
        data["source_dir"] = _source_dir(hps.get("sagemaker_submit_directory"), source_dir, origin)
    return job_from_mapping(
        data, origin=origin, base_dir=base_dir or Path(origin).resolve().parent, locate=req.locate, hint=_HINT
    )


def _source_dir(submitted: Any, override: Path | None, origin: str) -> str:
    if override is not None:
        return str(override.resolve())
    if isinstance(submitted, str) and not submitted.startswith("s3://"):
        return submitted.removeprefix("file://")
    raise JobSpecError(
        f"{origin}: HyperParameters.sagemaker_submit_directory is {submitted!r}, which this machine cannot read",
        hint="pass --source-dir with the local checkout of the job's code",
    )


def load_request(path: Path, *, source_dir: Path | None = None) -> JobSpec:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobSpecError(f"{path}: no such request file", hint="pass the path of a JSON request") from None
    except IsADirectoryError:
        raise JobSpecError(f"{path}: a directory, not a request file", hint="pass the path of a JSON request") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise JobSpecError(
            f"{path}: cannot read the request: {reason}", hint="pass the path of a JSON request, readable and UTF-8"
        ) from None
    try:
        request = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JobSpecError(
            f"{path}:{exc.lineno}:{exc.colno}: not a readable JSON request: {exc.msg}",
            hint="the file holds the JSON object given to create_training_job (json.dump(request, f))",
        ) from None
    return job_from_request(request, origin=str(path), source_dir=source_dir)
