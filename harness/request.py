"""Import a job from a boto3 ``create_training_job`` request, the form teams already keep in
their Airflow DAGs and scripts (``harness ladder --from-request request.json``).

The request's ``HyperParameters`` are the strings the SDK sent; they are decoded the way the
training toolkit decodes them (``json.loads``, else the raw string), and the ``sagemaker_*``
keys that SDK v2 adds become the job's entry point and distribution again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.errors import JobSpecError
from harness.jobspec import JobSpec, job_from_mapping


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value


def _get(data: dict[str, Any], origin: str, *path: str, required: bool = False) -> Any:
    node: Any = data
    for depth, key in enumerate(path):
        if not isinstance(node, dict):
            raise JobSpecError(f"{origin}: {'.'.join(path[:depth])}: expected an object, got {type(node).__name__}")
        if key not in node:
            if required:
                raise JobSpecError(f"{origin}: {'.'.join(path[: depth + 1])}: required by CreateTrainingJob")
            return None
        node = node[key]
    return node


def _channel(entry: dict[str, Any], origin: str) -> tuple[str, dict[str, Any]]:
    name = _get(entry, origin, "ChannelName", required=True)
    s3 = _get(entry, origin, "DataSource", "S3DataSource")
    fs = _get(entry, origin, "DataSource", "FileSystemDataSource")
    if s3:
        source = s3["S3Uri"]
        distribution = s3.get("S3DataDistributionType", "FullyReplicated")
    elif fs:
        source, distribution = fs["DirectoryPath"], "FullyReplicated"
    else:
        raise JobSpecError(f"{origin}: InputDataConfig.{name}.DataSource: needs S3DataSource or FileSystemDataSource")
    spec = {"source": source, "input_mode": entry.get("InputMode", "File"), "distribution": distribution}
    if entry.get("ContentType"):
        spec["content_type"] = entry["ContentType"]
    return name, spec


def job_from_request(request: dict[str, Any], *, origin: str, source_dir: Path | None = None) -> JobSpec:
    """A :class:`JobSpec` from a ``CreateTrainingJob`` request; ``source_dir`` replaces an
    ``s3://`` ``sagemaker_submit_directory`` with the local checkout of the same code."""
    if not isinstance(request, dict):
        raise JobSpecError(f"{origin}: expected a CreateTrainingJob request object")
    raw_hps = _get(request, origin, "HyperParameters") or {}
    if not isinstance(raw_hps, dict) or not all(isinstance(v, str) for v in raw_hps.values()):
        raise JobSpecError(f"{origin}: HyperParameters: expected a map of strings, as CreateTrainingJob sends them")
    hps = {key: _decode(value) for key, value in raw_hps.items()}
    data: dict[str, Any] = {
        "name": _get(request, origin, "TrainingJobName", required=True),
        "image": _get(request, origin, "AlgorithmSpecification", "TrainingImage"),
        "hyperparameters": {k: v for k, v in hps.items() if not k.startswith("sagemaker_")},
        "channels": dict(_channel(e, origin) for e in _get(request, origin, "InputDataConfig") or []),
        "instance_count": _get(request, origin, "ResourceConfig", "InstanceCount") or 1,
        "instance_type": _get(request, origin, "ResourceConfig", "InstanceType") or "ml.m5.xlarge",
        "environment": _get(request, origin, "Environment") or {},
        "metric_definitions": [
            {"name": m.get("Name"), "regex": m.get("Regex")}
            for m in _get(request, origin, "AlgorithmSpecification", "MetricDefinitions") or []
        ],
        "max_run": _get(request, origin, "StoppingCondition", "MaxRuntimeInSeconds") or 86400,
        "output_path": _get(request, origin, "OutputDataConfig", "S3OutputPath"),
    }
    checkpoint = _get(request, origin, "CheckpointConfig")
    if checkpoint:
        data["checkpoint"] = {
            "s3_uri": checkpoint.get("S3Uri"),
            "local_path": checkpoint.get("LocalPath", "/opt/ml/checkpoints"),
        }
    if hps.get("sagemaker_torch_distributed_enabled") is True:
        data["distribution"] = "torchrun"
        data["processes_per_host"] = int(hps.get("sagemaker_mpi_num_of_processes_per_host", 1))
    program = hps.get("sagemaker_program")
    if program:
        data["entry_point"] = program
        data["source_dir"] = _source_dir(hps.get("sagemaker_submit_directory"), source_dir, origin)
    return job_from_mapping(data, origin=origin, base_dir=Path(origin).resolve().parent)


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
        request = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobSpecError(f"{path}: no such request file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JobSpecError(f"{path}: not a readable JSON request: {exc}") from None
    return job_from_request(request, origin=str(path), source_dir=source_dir)
