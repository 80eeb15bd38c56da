"""Bad input: one clear message naming the file and key, exit code 2, nothing left behind."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from harness.cli import main

GOOD = """\
name: demo
source_dir: src
entry_point: train.py
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("print('ok')\n")
    (tmp_path / "data").mkdir()
    return tmp_path


CASES = {
    "unknown key": (GOOD + "instnce_count: 2\n", "instnce_count: unknown key"),
    "missing entry point file": (GOOD.replace("train.py", "nope.py"), "entry_point: 'nope.py' not found"),
    "neither script nor image": ("name: demo\n", "give entry_point (script mode) or image"),
    "negative instance count": (GOOD + "instance_count: -2\n", "instance_count: Input should be greater than 0"),
    "zero processes": (GOOD + "processes_per_host: 0\n", "processes_per_host: Input should be greater than 0"),
    "wrong type": (GOOD + "max_run: soon\n", "max_run: Input should be a valid integer"),
    "bad channel path": (GOOD + "channels:\n  train: missing-dir\n", "channels.train.source"),
    "unknown channel key": (
        GOOD + "channels:\n  train:\n    source: data\n    mode: Pipe\n",
        "channels.train.mode: unknown key",
    ),
    "metric regex without group": (
        GOOD + "metric_definitions:\n  - {name: loss, regex: 'loss=[0-9.]+'}\n",
        "needs one capture group",
    ),
    "invalid regex": (
        GOOD + "metric_definitions:\n  - {name: loss, regex: 'loss=([0-9'}\n",
        "not a valid regular expression",
    ),
    "invalid job name": (GOOD.replace("name: demo", "name: my_job!"), "name: the name 'my_job!' is not valid: use"),
    "not yaml": ("name: [unclosed\n", "not valid YAML"),
    "not a mapping": ("- just\n- a list\n", "expected a mapping of job keys"),
    "processes without distribution": (GOOD + "processes_per_host: 2\n", "needs distribution: torchrun"),
    "bad instance type": (GOOD + "instance_type: c5.xlarge\n", "expected a SageMaker instance type"),
    "bad env name": (GOOD + "environment:\n  1BAD: x\n", "not a valid environment variable name"),
    "malformed s3 channel": (GOOD + "channels:\n  train: s3:/bucket/x\n", "channels.train.source: 's3:/bucket/x'"),
    "bad bucket name": (GOOD + "channels:\n  train: s3://Big_Bucket/x\n", "is not an S3 URI"),
    "output path not on s3": (GOOD + "output_path: /tmp/out\n", "output_path: '/tmp/out' is not an S3 URI"),
}


@pytest.mark.parametrize("text, expected", CASES.values(), ids=CASES.keys())
def test_bad_job_file(workdir: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str) -> None:
    job = workdir / "job.yaml"
    job.write_text(text)
    records = workdir / "records"
    assert main(["run", str(job), "--records", str(records)]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert str(job) in err
    assert "Traceback" not in err
    assert not records.exists()


def test_missing_job_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ladder", str(tmp_path / "absent.yaml"), "--records", str(tmp_path / "r")]) == 2
    assert "no such job file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{not json", "not a readable JSON request"),
        ('{"HyperParameters": {}}', "TrainingJobName: required"),
        ('{"TrainingJobName": "x", "HyperParameters": {"epochs": 3}}', "HyperParameters.epochs: expected a string"),
        (
            '{"TrainingJobName": "x", "AlgorithmSpecification": {"TrainingImage": "img"}, '
            '"HyperParameters": {"sagemaker_program": "\\"train.py\\"", '
            '"sagemaker_submit_directory": "\\"s3://b/src.tar.gz\\""}}',
            "pass --source-dir",
        ),
    ],
)
def test_bad_request(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, expected: str) -> None:
    request = tmp_path / "request.json"
    request.write_text(content)
    assert main(["run", "--from-request", str(request), "--records", str(tmp_path / "r")]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["run", "--rung", "cloud-9", "x.yaml"], "invalid choice: 'cloud-9'"),
        (["ladder", "--rungs", "local,moon", "{job}"], "unknown rung 'moon'"),
        (["diff", "{tmp}", "{tmp}"], "not a run record"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_usage(workdir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str) -> None:
    job = workdir / "job.yaml"
    job.write_text(GOOD)
    argv = [a.format(job=job, tmp=workdir) for a in argv]
    assert main(argv) == 2
    assert expected in capsys.readouterr().err


def test_request_roundtrip(tmp_path: Path, scenarios: Path) -> None:
    """A v2-style request (JSON-encoded hyperparameters) gives back the job it describes."""
    from harness.request import load_request

    request = {
        "TrainingJobName": "ddp-csv",
        "AlgorithmSpecification": {
            "TrainingImage": "img",
            "TrainingInputMode": "File",
            "MetricDefinitions": [{"Name": "loss", "Regex": "loss=([0-9.]+)"}],
        },
        "HyperParameters": {
            "epochs": "4",
            "learning-rate": "0.05",
            "shuffle": "true",
            "optim": '"adam"',
            "sagemaker_program": '"train.py"',
            "sagemaker_torch_distributed_enabled": "true",
            "sagemaker_submit_directory": '"s3://bucket/source.tar.gz"',
        },
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "ContentType": "text/csv",
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": "s3://bucket/train",
                        "S3DataDistributionType": "ShardedByS3Key",
                    }
                },
            }
        ],
        "ResourceConfig": {"InstanceType": "ml.p4d.24xlarge", "InstanceCount": 2, "VolumeSizeInGB": 50},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "OutputDataConfig": {"S3OutputPath": "s3://bucket/out"},
        "RoleArn": "arn:aws:iam::111122223333:role/sm",
    }
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    job = load_request(path, source_dir=scenarios / "ddp_csv" / "src")
    assert job.hyperparameters == {"epochs": 4, "learning-rate": 0.05, "shuffle": True, "optim": "adam"}
    assert (job.entry_point, job.distribution, job.instance_count, job.max_run) == ("train.py", "torchrun", 2, 3600)
    assert job.channels["train"].distribution == "ShardedByS3Key"
    assert job.metric_definitions[0].regex == "loss=([0-9.]+)"


def test_s3_channel_without_credentials_is_refused_before_anything_runs(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("boto3", reason="boto3 is in the [s3] extra")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(workdir / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(workdir / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    job = workdir / "job.yaml"
    job.write_text(GOOD + "channels:\n  train: s3://team-data/train/\n")
    records = workdir / "records"
    assert main(["run", str(job), "--records", str(records)]) == 1
    err = capsys.readouterr().err
    assert "the job uses S3" in err and "no AWS credentials" in err and "harness localstack env" in err
    assert "Traceback" not in err
    assert not records.exists()


def test_localstack_without_a_recent_python_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing installed yet
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pyenv"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setenv("HARNESS_LOCALSTACK_PYTHON", sys.executable)  # 3.11/3.12: too old
    if sys.version_info >= (3, 13):
        pytest.skip("this interpreter is new enough for LocalStack")
    assert main(["localstack", "up", "--port", "4599"]) == 1
    err = capsys.readouterr().err
    assert "LocalStack needs Python 3.13 or newer" in err and "HARNESS_LOCALSTACK_PYTHON" in err
    assert "Traceback" not in err
    assert not (tmp_path / "cache" / "harness" / "localstack" / "venv").exists()
