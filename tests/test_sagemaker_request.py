"""The `sagemaker` rung's dry-run: the exact CreateTrainingJob request, with no credentials.

Golden requests live in tests/data/sagemaker/ (`UPDATE_GOLDEN=1 pytest tests/test_sagemaker_request.py`
rewrites them and skips the comparison: review the diff, then run again without it). Validation
needs botocore (`pip install '.[sagemaker]'`); the cross-check with the SDK's own request needs
the SDK; each is skipped with the reason where it is missing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from harness.backends.sagemaker import (
    PLACEHOLDER_ROLE,
    SageMakerBackend,
    training_job_request,
    unique_name,
    validate_request,
)
from harness.errors import JobSpecError
from harness.spec.job import Channel, Checkpoint, JobSpec, MetricDefinition, load_job

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "data" / "sagemaker"
ROLE = "arn:aws:iam::111122223333:role/SageMakerTraining"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.6.0-cpu-py312-ubuntu22.04-sagemaker"
NAME = "ddp-csv-20261123120000"


def _full_job() -> JobSpec:
    """Everything a request can carry: S3 and local channels, sharding, FastFile, checkpoints,
    an output path, environment and metric definitions."""
    return JobSpec(
        name="full",
        source_dir=ROOT / "scenarios" / "ddp_csv" / "src",
        entry_point="train.py",
        image=IMAGE,
        hyperparameters={"epochs": 2, "optimizer": "adam", "layers": [64, 32], "flag": False},
        channels={
            "train": Channel(source="s3://data-bucket/train/", distribution="ShardedByS3Key", content_type="text/csv"),
            "eval": Channel(source=str(ROOT / "scenarios" / "ddp_csv" / "data"), input_mode="FastFile"),
        },
        instance_count=4,
        instance_type="ml.g5.2xlarge",
        processes_per_host=1,
        distribution="torchrun",
        environment={"NCCL_DEBUG": "INFO"},
        metric_definitions=[MetricDefinition(name="loss", regex="loss=([0-9.]+)")],
        max_run=7200,
        checkpoint=Checkpoint(local_path="/opt/ml/checkpoints"),
        output_path="s3://team-bucket/models",
    )


JOBS = {"ddp_csv": lambda: load_job(ROOT / "scenarios" / "ddp_csv" / "job.yaml"), "full": _full_job}


def _request(job: JobSpec) -> dict[str, Any]:
    return training_job_request(
        job,
        role=ROLE,
        bucket="sagemaker-us-east-1-111122223333",
        image=job.image or IMAGE,
        job_name=f"{job.name}-20261123120000",
    ).body


@pytest.mark.parametrize("name", sorted(JOBS))
def test_request_matches_its_golden_copy(name: str) -> None:
    body = _request(JOBS[name]())
    golden = GOLDEN / f"{name}.request.json"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(json.dumps(body, indent=2) + "\n")
        # compared with the file just written, the test could not fail: it says what it did instead
        pytest.skip(f"UPDATE_GOLDEN: rewrote {golden.relative_to(ROOT)}; run again without it to compare")
    assert body == json.loads(golden.read_text())
    assert list(body) == list(json.loads(golden.read_text()))  # the SDK's key order too


@pytest.mark.parametrize("name", sorted(JOBS))
def test_golden_requests_pass_botocore_validation(name: str) -> None:
    pytest.importorskip("botocore", reason="botocore is in the [sagemaker] extra")
    validate_request(json.loads((GOLDEN / f"{name}.request.json").read_text()))


def test_a_value_sagemaker_refuses_is_named() -> None:
    pytest.importorskip("botocore", reason="botocore is in the [sagemaker] extra")
    job = JobSpec(name="big", source_dir=ROOT, entry_point="x.py", environment={"TOKENS": "x" * 600})
    with pytest.raises(JobSpecError, match=r"Environment\.TOKENS.*512"):
        validate_request(_request(job))


def test_unique_name_is_the_sdks() -> None:
    import datetime as dt

    assert unique_name("ddp_csv", dt.datetime(2026, 11, 23, 12, 0, 0)) == "ddp-csv-20261123120000"
    assert len(unique_name("x" * 60)) == 63  # the SDK cuts into the timestamp too


def test_dry_run_needs_no_credentials_and_marks_placeholders(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("botocore", reason="botocore is in the [sagemaker] extra")
    monkeypatch.delenv("HARNESS_SAGEMAKER_ROLE", raising=False)
    monkeypatch.delenv("HARNESS_SAGEMAKER_BUCKET", raising=False)
    plan = SageMakerBackend().plan(load_job(ROOT / "scenarios" / "ddp_csv" / "job.yaml"))
    printed = json.loads(plan.describe())
    assert printed["CreateTrainingJob"]["RoleArn"] == PLACEHOLDER_ROLE
    assert len(printed["placeholders"]) == 3
    assert printed["uploads"][str(ROOT / "scenarios" / "ddp_csv" / "data")].endswith("/input/train")
    assert "ml.c5.xlarge" in plan.facts["cost"]


class _NoAws:
    region_name = None

    def get_credentials(self) -> None:
        return None


def test_unavailable_says_everything_that_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("boto3", reason="boto3 is in the [sagemaker] extra")
    monkeypatch.delenv("HARNESS_SAGEMAKER_ROLE", raising=False)
    monkeypatch.delenv("HARNESS_SAGEMAKER_BUCKET", raising=False)
    reason = SageMakerBackend(boto_session=_NoAws()).unavailable_reason() or ""
    for word in ("credentials", "region", "HARNESS_SAGEMAKER_ROLE", "HARNESS_SAGEMAKER_BUCKET"):
        assert word in reason


def test_request_is_what_the_sdk_itself_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    """ModelTrainer builds its request offline once the calls it makes to AWS are stood in for:
    role validation (IAM) off, a session whose bucket and uploads answer locally."""
    pytest.importorskip("sagemaker.train", reason="the SageMaker SDK v3 is the [sagemaker] extra")
    import boto3
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.train import ModelTrainer
    from sagemaker.train.configs import Compute, InputData, MetricDefinition, SourceCode, StoppingCondition
    from sagemaker.train.distributed import Torchrun
    from sagemaker.train.model_trainer import Mode

    class OfflineSession(Session):  # type: ignore[misc]
        def default_bucket(self) -> str:
            return "sagemaker-us-east-1-111122223333"

        def upload_data(self, path: str, bucket: str, key_prefix: str, **kwargs: Any) -> str:
            return f"s3://{bucket}/{key_prefix}"

    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")
    job = load_job(ROOT / "scenarios" / "ddp_csv" / "job.yaml")
    boto = boto3.Session(region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="x")
    session = OfflineSession(boto_session=boto, sagemaker_config={})
    trainer = ModelTrainer(
        training_mode=Mode.SAGEMAKER_TRAINING_JOB,
        sagemaker_session=session,
        role=ROLE,
        training_image=IMAGE,
        base_job_name=job.name,
        source_code=SourceCode(source_dir=str(job.source_dir), entry_script=job.entry_point),
        distributed=Torchrun(process_count_per_node=job.processes_per_host),
        compute=Compute(instance_type=job.instance_type, instance_count=job.instance_count),
        stopping_condition=StoppingCondition(max_runtime_in_seconds=job.max_run),
        hyperparameters=dict(job.hyperparameters),
        input_data_config=[
            InputData(channel_name=n, data_source=c.source, content_type=c.content_type)
            for n, c in job.channels.items()
        ],
    ).with_metric_definitions([MetricDefinition(name=m.name, regex=m.regex) for m in job.metric_definitions])
    monkeypatch.setattr(
        trainer, "_resolve_staging_bucket", lambda: ("sagemaker-us-east-1-111122223333", None), raising=False
    )
    theirs = json.loads(json.dumps(trainer._create_training_job_args(boto3=True), default=str))
    ours = training_job_request(
        job, role=ROLE, bucket="sagemaker-us-east-1-111122223333", image=IMAGE, job_name=theirs["TrainingJobName"]
    ).body
    assert ours == theirs
    assert list(ours) == list(theirs)
