"""The ``sagemaker`` rung end to end, without AWS.

What runs for real: ``ModelTrainer`` (SDK v3) builds and submits the job, uploading the code and
its drivers to S3 and checking the role with IAM, both on the harness's LocalStack; the rung then
follows the job through CloudWatch Logs and fetches its artifacts from S3, also LocalStack. What
cannot run here is the SageMaker API itself: botocore's ``Stubber`` answers ``CreateTrainingJob``
and ``DescribeTrainingJob``, validating each request and each response against the service model,
and the test leaves in LocalStack what a finished job leaves (a log stream per host, the two
archives) when the job is created. The job's logs and archives are a real ``local`` run's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from harness.backends import get_backend
from harness.backends.hosts import PROBE_DIR
from harness.backends.sagemaker import SageMakerBackend, SageMakerOptions, training_job_request, with_probe
from harness.errors import RungFailed
from harness.judge.protocol import Tolerance
from harness.judge.verdict import judge
from harness.record.run_record import RunRecord, log_text
from harness.report import to_text
from harness.spec.job import load_job

pytestmark = [pytest.mark.slow, pytest.mark.localstack]
pytest.importorskip("sagemaker.train", reason="the SageMaker SDK v3 is the [sagemaker] extra")

BUCKET = "harness-sagemaker-tests"
ROLE_NAME = "HarnessSageMakerTraining"
#: What docs/sagemaker.md asks of the execution role, S3 limited to the bucket. (The SDK asks IAM
#: whether the role may put objects in the bucket, and stages the code under the output path
#: where it may not.)
EXECUTION_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"],
        },
        {
            "Effect": "Allow",
            "Resource": "*",
            "Action": [
                "logs:CreateLogGroup",
                "logs:CreateLogStream",
                "logs:PutLogEvents",
                "ecr:GetAuthorizationToken",
                "ecr:BatchGetImage",
                "ecr:GetDownloadUrlForLayer",
                "ecr:BatchCheckLayerAvailability",
                "cloudwatch:PutMetricData",
            ],
        },
    ],
}
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.5.1-cpu-py311"


class _Finished:
    """Stands in for the SageMaker API: a job that starts, trains and completes, leaving ``local``'s
    logs and artifacts where the service leaves them."""

    def __init__(
        self,
        sagemaker: Any,
        boto: Any,
        replayed: RunRecord,
        *,
        outcome: str = "Completed",
        failure: str | None = None,
        denied_after_start: bool = False,
    ) -> None:
        from botocore.stub import Stubber

        self.boto, self.replayed, self.outcome, self.failure = boto, replayed, outcome, failure
        self.denied_after_start = denied_after_start
        self.stubber = Stubber(sagemaker)
        self.submitted: dict[str, Any] = {}
        sagemaker.meta.events.register("provide-client-params.sagemaker.CreateTrainingJob", self._created)

    def _output_with_probe(self) -> Path:
        """``output.tar.gz`` as the job leaves it: the output data, and the probe's files under
        ``harness-probe/`` (the replayed run's own)."""
        root = self.replayed.root
        path = root.parent / f"{root.name}-service-output.tar.gz"
        with tarfile.open(root / "artifacts" / "output.tar.gz") as original, tarfile.open(path, "w:gz") as tar:
            for member in original.getmembers():
                tar.addfile(member, original.extractfile(member) if member.isfile() else None)
            for sub in ("processes", "ranks", "hosts"):
                for file in sorted((root / sub).rglob("*")):
                    if file.is_file() and (sub != "hosts" or file.name == "fingerprint.json"):
                        tar.add(file, arcname=f"harness-probe/{file.relative_to(root).as_posix()}")
            forged = json.dumps({"format_version": 1, "status": "succeeded", "forged": True}).encode()
            info = tarfile.TarInfo("harness-probe/manifest.json")  # the job can write there too
            info.size = len(forged)
            tar.addfile(info, io.BytesIO(forged))
        return path

    def _created(self, params: dict[str, Any], **_: Any) -> None:
        self.submitted = params
        name = params["TrainingJobName"]
        # an hour ago: CloudWatch Logs (and LocalStack) refuse events older than 14 days
        start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
        logs = self.boto.client("logs")
        logs.create_log_group(logGroupName="/aws/sagemaker/TrainingJobs") if not logs.describe_log_groups(
            logGroupNamePrefix="/aws/sagemaker/TrainingJobs"
        )["logGroups"] else None
        for host in ("algo-1", "algo-2"):
            stream = f"{name}/{host}-{int(start.timestamp())}"
            logs.create_log_stream(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream)
            lines = (self.replayed.root / "hosts" / host / "log.txt").read_text().splitlines()
            events = [
                {"timestamp": int(start.timestamp() * 1000) + i, "message": log_text(line)}
                for i, line in enumerate(lines)
            ]
            logs.put_log_events(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream, logEvents=events)
        output = f"{params['OutputDataConfig']['S3OutputPath']}/{name}/output"
        s3 = self.boto.client("s3")
        for archive, path in (
            ("model.tar.gz", self.replayed.root / "artifacts" / "model.tar.gz"),
            ("output.tar.gz", self._output_with_probe()),
        ):
            s3.upload_file(str(path), BUCKET, f"{output}/{archive}".removeprefix(f"s3://{BUCKET}/"))
        described = {
            "TrainingJobName": name,
            "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:000000000000:training-job/{name}",
            "AlgorithmSpecification": params["AlgorithmSpecification"],
            "RoleArn": params["RoleArn"],
            "HyperParameters": params["HyperParameters"],
            "InputDataConfig": params["InputDataConfig"],
            "OutputDataConfig": params["OutputDataConfig"],
            "ResourceConfig": params["ResourceConfig"],
            "StoppingCondition": params["StoppingCondition"],
            "ModelArtifacts": {"S3ModelArtifacts": f"{output}/model.tar.gz"},
            "CreationTime": start,
            "LastModifiedTime": start,
            "EnableNetworkIsolation": False,
        }
        phases = [
            ("InProgress", "Starting", {}),
            ("InProgress", "Training", {"TrainingStartTime": start}),
            (
                self.outcome,
                self.outcome,
                {
                    "TrainingStartTime": start,
                    "TrainingEndTime": start + dt.timedelta(seconds=83),
                    "BillableTimeInSeconds": 83,
                    "TrainingTimeInSeconds": 83,
                    **({"FailureReason": self.failure} if self.failure else {}),
                },
            ),
        ]
        self.stubber.add_response("create_training_job", {"TrainingJobArn": described["TrainingJobArn"]})
        if self.denied_after_start:  # the SDK's own look at the job, then the harness may not follow it
            phases = phases[:1]
        for status, secondary, extra in phases:
            self.stubber.add_response(
                "describe_training_job",
                {**described, "TrainingJobStatus": status, "SecondaryStatus": secondary, **extra},
            )
        if self.denied_after_start:
            self.stubber.add_client_error(
                "describe_training_job",
                "AccessDeniedException",
                "not authorized to perform: sagemaker:DescribeTrainingJob",
            )
            self.stubber.add_response("stop_training_job", {}, {"TrainingJobName": name})


@pytest.fixture
def aws(localstack: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A bucket and an execution role in LocalStack, and a boto3 session whose SageMaker client
    is stubbed (every other client talks to LocalStack)."""
    import boto3

    # The SDK still looks the role up in IAM (LocalStack), but its permission check asks
    # SimulatePrincipalPolicy without ResourceArns, which LocalStack 2026.3 answers with a 500.
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")

    sagemaker = boto3.client("sagemaker")

    class Session(boto3.Session):  # type: ignore[misc]
        def client(self, service_name: str, *args: Any, **kwargs: Any) -> Any:
            return sagemaker if service_name == "sagemaker" else super().client(service_name, *args, **kwargs)

    session = Session()
    s3, iam, logs = session.client("s3"), session.client("iam"), session.client("logs")
    # Job names have one-second resolution (the SDK's): two tests in one second name the same job,
    # which the service would refuse; each test starts with no log streams instead.
    with contextlib.suppress(logs.exceptions.ResourceNotFoundException):
        logs.delete_log_group(logGroupName="/aws/sagemaker/TrainingJobs")
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"Service": "sagemaker.amazonaws.com"}}
        ],
    }
    try:
        role = iam.get_role(RoleName=ROLE_NAME)["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        role = iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
        iam.put_role_policy(RoleName=ROLE_NAME, PolicyName="training", PolicyDocument=json.dumps(EXECUTION_POLICY))
    return {"session": session, "sagemaker": sagemaker, "role": role}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory, scenarios_dir: Path) -> RunRecord:
    """The reference job on ``local``: its logs and archives are what the stand-in job leaves."""
    return get_backend("local").run(load_job(scenarios_dir / "ddp_csv" / "job.yaml"), tmp_path_factory.mktemp("local"))


@pytest.fixture(scope="module")
def scenarios_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "scenarios"


def _backend(aws: dict[str, Any]) -> SageMakerBackend:
    return SageMakerBackend(
        SageMakerOptions(role=aws["role"], bucket=BUCKET, image=IMAGE, poll_s=0.01), boto_session=aws["session"]
    )


def test_submitted_job_is_followed_into_a_record_at_parity_with_local(
    aws: dict[str, Any], local_run: RunRecord, scenarios_dir: Path, records: Path
) -> None:
    job = load_job(scenarios_dir / "ddp_csv" / "job.yaml")
    service = _Finished(aws["sagemaker"], aws["session"], local_run)
    backend = _backend(aws)
    with service.stubber:
        record = backend.run(job, records)
        service.stubber.assert_no_pending_responses()
    name = service.submitted["TrainingJobName"]
    assert record.status == "succeeded" and record.manifest.rung_facts["training_job_name"] == name
    # what ModelTrainer sent is what the dry-run prints, the probe's channel and variables included
    assert (
        service.submitted
        == training_job_request(
            with_probe(job, PROBE_DIR), role=aws["role"], bucket=BUCKET, image=IMAGE, job_name=name
        ).body
    )
    assert service.submitted["Environment"]["HARNESS_PROBE_DIR"] == "/opt/ml/output/data/harness-probe"
    # the probe's files came back in output.tar.gz: out of the archive, into the record
    assert sorted(record.manifest.ranks) == ["0", "1", "2", "3"]
    assert (record.root / "hosts" / "algo-2" / "fingerprint.json").is_file()
    # ... and only the probe's: a manifest.json the job left there never replaces the record's
    assert "forged" not in record.manifest.as_file() and record.manifest.rung == "sagemaker"
    assert "harness-probe/manifest.json" in record.manifest.rung_facts["probe_files_ignored"]
    assert (
        record.read_json("artifacts/summary.json")["output.tar.gz"]["files"].keys()
        == local_run.read_json("artifacts/summary.json")["output.tar.gz"]["files"].keys()
    )
    # the SDK uploaded the code and its drivers for real
    keys = [
        o["Key"]
        for o in aws["session"]
        .client("s3")
        .list_objects_v2(Bucket=BUCKET, Prefix=f"{job.name}/{name}/")
        .get("Contents", [])
    ]
    assert any("/input/code/" in k or k.endswith("code/sourcedir.tar.gz") for k in keys), keys
    for host in job.hosts:
        assert (record.root / "hosts" / host / "log.txt").read_text().count("\n") == (
            local_run.root / "hosts" / host / "log.txt"
        ).read_text().count("\n")
    verdict = judge([local_run, record], tolerance=Tolerance(0, 0, 0, 0))
    assert verdict.outcome == "parity", to_text(verdict)


def test_failed_job_keeps_the_service_failure_reason(
    aws: dict[str, Any], local_run: RunRecord, scenarios_dir: Path, records: Path
) -> None:
    job = load_job(scenarios_dir / "ddp_csv" / "job.yaml")
    reason = 'AlgorithmError: ExecuteUserScriptError:\nExitCode 1\nErrorMessage "RuntimeError: boom"'
    service = _Finished(aws["sagemaker"], aws["session"], local_run, outcome="Failed", failure=reason)
    with service.stubber:
        record = _backend(aws).run(job, records)
    assert record.status == "failed"
    assert record.manifest.hosts["algo-1"].exit_code == 1
    assert record.manifest.hosts["algo-1"].failure_reason == reason
    verdict = judge([local_run, record])
    assert verdict.outcome == "failed" and verdict.first_rung == "sagemaker"


def test_a_job_the_harness_cannot_follow_is_stopped(
    aws: dict[str, Any], local_run: RunRecord, scenarios_dir: Path, records: Path
) -> None:
    job = load_job(scenarios_dir / "ddp_csv" / "job.yaml")
    service = _Finished(aws["sagemaker"], aws["session"], local_run, denied_after_start=True)
    with service.stubber, pytest.raises(RungFailed, match="AccessDeniedException"):
        _backend(aws).run(job, records)
    service.stubber.assert_no_pending_responses()  # StopTrainingJob was called for that job
    (record_dir,) = records.iterdir()
    assert RunRecord.load(record_dir).status == "error"
