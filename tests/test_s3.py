"""s3:// channels and S3 output paths on every rung that runs here, against the harness's real
LocalStack (tests read and seed it through ``localstack-client``, as a team's tests would)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from harness.backends import get_backend
from harness.errors import HarnessError
from harness.ladder.scenario import run_scenario
from harness.record.run_record import RunRecord
from harness.spec.job import JobSpec, load_job
from harness.spec.s3 import S3Uri, upload_tree

pytestmark = [pytest.mark.slow, pytest.mark.localstack]


def _s3(endpoint: str):  # type: ignore[no-untyped-def]
    from localstack_client.session import Session

    return Session(localstack_host=endpoint.removeprefix("http://")).client("s3")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _secret_written(records: Path, secret: str) -> list[str]:
    return [str(p) for p in records.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_s3_reference_job_is_parity_on_every_rung_and_uploads_its_artifacts(
    localstack: dict[str, str], scenarios: Path, records: Path
) -> None:
    result = run_scenario(scenarios / "ddp_s3", records)
    assert result.verdict is not None and result.verdict.outcome == "parity", result.skipped
    ran = [record.rung for record in result.records]
    assert ran[0] == "local" and len(ran) + len(result.skipped) == 3
    s3 = _s3(localstack["endpoint"])
    for record in result.records:
        channels = record.read_json("hosts/algo-2/received/channels.json") if record.rung != "sagemaker-local" else None
        if channels is not None:
            assert channels["train"]["files"] == {"train.csv": 69224}
        uploaded = record.manifest.uploaded
        assert set(uploaded) == {"model.tar.gz", "output.tar.gz"}
        for archive, uri in uploaded.items():
            assert uri.endswith(f"/{record.root.name}/output/{archive}")
            where = S3Uri.parse(uri)
            body = s3.get_object(Bucket=where.bucket, Key=where.key)["Body"].read()
            assert _sha(body) == _sha((record.root / "artifacts" / archive).read_bytes())
    assert _secret_written(records, localstack["secret"]) == []
    shown = subprocess.run(
        [sys.executable, "-m", "harness", "show", str(result.records[0].root)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"uploaded model.tar.gz: {result.records[0].manifest.uploaded['model.tar.gz']}" in shown


def test_sharded_channel_gives_each_host_its_own_keys(
    localstack: dict[str, str], tmp_path: Path, records: Path
) -> None:
    data = tmp_path / "shards"
    data.mkdir()
    for index in range(5):
        (data / f"part-{index}.csv").write_text(f"x\n{index}\n")
    upload_tree(data, "s3://harness-tests/sharded/", create_bucket=True)
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text("import os\nprint(sorted(os.listdir('/opt/ml/input/data/train')))\n")
    job = JobSpec(
        name="sharded",
        source_dir=source,
        entry_point="train.py",
        instance_count=2,
        channels={"train": {"source": "s3://harness-tests/sharded/", "distribution": "ShardedByS3Key"}},
    )
    backend = get_backend("local")
    record = backend.run(job, records)
    assert record.status == "succeeded"
    assert "['part-1.csv', 'part-3.csv']" in (record.root / "hosts" / "algo-2" / "log.txt").read_text()
    shares = [set(record.read_json(f"hosts/{host}/received/channels.json")["train"]["files"]) for host in job.hosts]
    assert shares[0] == {"part-0.csv", "part-2.csv", "part-4.csv"}
    assert shares[1] == {"part-1.csv", "part-3.csv"}


def test_missing_s3_data_is_a_clear_error_and_a_complete_record(
    localstack: dict[str, str], scenarios: Path, records: Path
) -> None:
    job = load_job(scenarios / "ddp_s3" / "job.yaml").model_copy(
        update={
            "channels": {
                "train": load_job(scenarios / "ddp_s3" / "job.yaml")
                .channels["train"]
                .model_copy(update={"source": "s3://harness-tests/nothing-here/"})
            }
        }
    )
    with pytest.raises(HarnessError, match=r"no S3 objects found under s3://harness-tests/nothing-here/"):
        get_backend("local").run(job, records)
    (record_dir,) = records.iterdir()
    record = RunRecord.load(record_dir)
    assert record.status == "error" and record.manifest.complete


def test_cli_localstack_env_points_boto3_at_it(localstack: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "harness", "localstack", "env"], capture_output=True, text=True, check=True
    )
    assert f"export AWS_ENDPOINT_URL_S3={localstack['endpoint']}" in out.stdout.splitlines()
    status = subprocess.run(
        [sys.executable, "-m", "harness", "localstack", "status"], capture_output=True, text=True, check=True
    )
    assert localstack["endpoint"] in status.stdout


def test_checkpoints_are_restored_before_the_job_and_synced_per_run(
    localstack: dict[str, str], tmp_path: Path, records: Path
) -> None:
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "checkpoint-3.pt").write_text("from an earlier job")
    base = f"resume-{uuid.uuid4().hex[:8]}"  # the session's LocalStack may hold earlier runs' files
    upload_tree(staged, f"s3://harness-tests/{base}/checkpoints/", create_bucket=True)
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text(
        "import os\nprint('found', sorted(os.listdir('/opt/ml/checkpoints')))\n"
        "open('/opt/ml/checkpoints/checkpoint-4.pt', 'w').write(os.environ['HARNESS_HOST'])\n"
    )
    job = JobSpec(
        name="resume",
        source_dir=source,
        entry_point="train.py",
        instance_count=2,
        checkpoint={"s3_uri": f"s3://harness-tests/{base}/checkpoints/"},
    )
    record = get_backend("local").run(job, records)
    assert record.status == "succeeded"
    assert "found ['checkpoint-3.pt']" in (record.root / "hosts" / "algo-2" / "log.txt").read_text()
    checkpoints = record.manifest.checkpoints
    assert checkpoints is not None
    run_prefix = f"{base}/harness-runs/{record.root.name}/checkpoints"
    assert checkpoints.s3_uri == f"s3://harness-tests/{run_prefix}"
    assert checkpoints.clashes_with_different_content == ["checkpoint-4.pt"]  # each host wrote its name
    s3 = _s3(localstack["endpoint"])
    listed = s3.list_objects_v2(Bucket="harness-tests", Prefix=f"{base}/checkpoints")["Contents"]
    assert [o["Key"] for o in listed] == [f"{base}/checkpoints/checkpoint-3.pt"]  # the job's prefix: untouched
    listed = s3.list_objects_v2(Bucket="harness-tests", Prefix=run_prefix)["Contents"]
    assert sorted(o["Key"].removeprefix(run_prefix) for o in listed) == ["/checkpoint-3.pt", "/checkpoint-4.pt"]
