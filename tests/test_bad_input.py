"""Bad input: exit code 2 (or 1 where a run could not go on), one message naming the file and key
and one hint, never a traceback, nothing left behind under --records.

The table covers job files, command lines, boto3 requests and damaged records (``diff`` and
``show`` read whatever directory they are given); ``one_error`` is the promise every case keeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fake_records import make_record

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


def one_error(err: str) -> str:
    """stderr of a refused command: one ``harness: error:`` line, one ``hint:`` line, nothing
    else (no traceback, no second message); returns the error line."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("harness: error: "), err
    assert lines[1].startswith("hint: "), err
    return lines[0]


# ---- job files ------------------------------------------------------------------------------------

CASES = {
    "unknown key": (GOOD + "instnce_count: 2\n", "instnce_count: unknown key; did you mean 'instance_count'?"),
    "unknown key like none": (GOOD + "zebra: 2\n", "zebra: unknown key; expected one of: name, source_dir"),
    "missing entry point file": (GOOD.replace("train.py", "nope.py"), "entry_point: 'nope.py' not found"),
    "misspelt entry point": (GOOD.replace("train.py", "trian.py"), "not found in"),
    "neither script nor image": ("name: demo\n", "give entry_point (script mode) or image"),
    "negative instance count": (GOOD + "instance_count: -2\n", "instance_count: Input should be greater than 0"),
    "zero processes": (GOOD + "processes_per_host: 0\n", "processes_per_host: Input should be greater than 0"),
    "wrong type": (GOOD + "max_run: soon\n", "max_run: Input should be a valid integer"),
    "bad channel path": (GOOD + "channels:\n  train: missing-dir\n", "channels.train.source"),
    "hyphenated channel under ModelTrainer": (
        GOOD + "launcher: model-trainer\nchannels:\n  extra-data: .\n",
        "channel 'extra-data': ModelTrainer's drivers export SM_CHANNEL_EXTRA-DATA",
    ),
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
    "invalid job name": (
        GOOD.replace("name: demo", "name: my_job!"),
        "name: the name 'my_job!' is not valid: use letters, digits and hyphens, starting and ending with a letter "
        "or digit, at most 63 characters (SageMaker's TrainingJobName rule)",
    ),
    "job name too long": (GOOD.replace("name: demo", "name: " + "a" * 64), "is 64 characters long: use letters"),
    "invalid channel name": (GOOD + "channels:\n  my_data: data\n", "channels.my_data: the channel name 'my_data'"),
    "null hyperparameter": (
        GOOD + "hyperparameters:\n  lr: null\n",
        "hyperparameters.lr: expected a string, number, boolean, list or mapping (got None)",
    ),
    "not yaml": ("name: [unclosed\n", "not valid YAML"),
    "empty job file": ("", "the job file is empty"),
    "not a mapping": ("- just\n- a list\n", "expected a mapping of job keys (name: ..., entry_point: ...), got a list"),
    "processes without distribution": (GOOD + "processes_per_host: 2\n", "needs distribution: torchrun"),
    "bad instance type": (GOOD + "instance_type: c5.xlarge\n", "expected a SageMaker instance type"),
    "bad env name": (GOOD + "environment:\n  1BAD: x\n", "not a valid environment variable name"),
    "malformed s3 channel": (GOOD + "channels:\n  train: s3:/bucket/x\n", "channels.train.source: 's3:/bucket/x'"),
    "bad bucket name": (GOOD + "channels:\n  train: s3://Big_Bucket/x\n", "is not an S3 URI"),
    "output path not on s3": (GOOD + "output_path: /tmp/out\n", "output_path: '/tmp/out' is not an S3 URI"),
}


@pytest.mark.parametrize("text, expected", CASES.values(), ids=CASES.keys())
@pytest.mark.unit
def test_bad_job_file(workdir: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str) -> None:
    job = workdir / "job.yaml"
    job.write_text(text)
    records = workdir / "records"
    assert main(["run", str(job), "--records", str(records)]) == 2
    error = one_error(capsys.readouterr().err)
    assert expected in error
    assert str(job) in error
    assert "pattern" not in error and "^[" not in error  # a rule in words, never a regular expression
    assert not records.exists()


@pytest.mark.unit
def test_missing_job_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ladder", str(tmp_path / "absent.yaml"), "--records", str(tmp_path / "r")]) == 2
    assert "no such job file" in one_error(capsys.readouterr().err)
    assert not (tmp_path / "r").exists()


@pytest.mark.unit
def test_a_directory_given_as_job_file_suggests_the_job_inside(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "job.yaml").write_text(GOOD)
    assert main(["run", str(workdir), "--records", str(workdir / "records")]) == 2
    err = capsys.readouterr().err
    assert f"{workdir}: a directory, not a job file" in one_error(err)
    assert f"hint: did you mean {workdir / 'job.yaml'}?" in err
    assert "Errno" not in err and not (workdir / "records").exists()


# ---- command lines --------------------------------------------------------------------------------

USAGE = {
    "unknown rung": (["run", "--rung", "cloud-9", "x.yaml"], "invalid choice: 'cloud-9'"),
    "misspelt rung": (["run", "--rung", "dokcer", "{job}"], "invalid choice: 'dokcer'", "did you mean 'docker'?"),
    "unknown ladder rung": (["ladder", "--rungs", "local,moon", "{job}"], "unknown rung 'moon'"),
    "misspelt ladder rung": (
        ["ladder", "{job}", "--rungs", "local,dokcer"],
        "--rungs: unknown rung 'dokcer'",
        "did you mean 'docker'?",
    ),
    "misspelt required rung": (
        ["ladder", "{job}", "--require", "lcoal"],
        "--require: unknown rung 'lcoal'",
        "did you mean 'local'?",
    ),
    "empty rung list": (["ladder", "{job}", "--rungs", ","], "--rungs: no rung named"),
    "not a record": (["diff", "{tmp}", "{tmp}"], "not a run record (no manifest.json)"),
    "unknown command": (["frobnicate"], "invalid choice"),
    "run a directory": (["run", "{tmp}/src"], "a directory, not a job file"),
    "records under a file (run)": (["run", "{job}", "--records", "{file}/runs"], "{file} is a file, not a directory"),
    "records under a file (ladder)": (
        ["ladder", "{job}", "--rungs", "local", "--records", "{file}"],
        "--records {file}: {file} is a file, not a directory",
    ),
    "negative rtol": (["ladder", "{job}", "--rtol", "-1"], "argument --rtol: a tolerance is a number >= 0, got '-1'"),
    "nan atol": (["diff", "{tmp}", "{tmp}", "--atol", "nan"], "argument --atol: a tolerance is a number >= 0"),
    "tensor rtol not a number": (["diff", "{tmp}", "{tmp}", "--tensor-rtol", "tight"], "got 'tight'"),
    "hang after zero": (["run", "{job}", "--hang-after", "0"], "argument --hang-after: expected a number of seconds"),
    "report into a missing directory": (
        ["ladder", "{job}", "--rungs", "local", "--json", "{tmp}/nowhere/v.json"],
        "--json {tmp}/nowhere/v.json: no directory {tmp}/nowhere",
    ),
    "report onto a directory": (["ladder", "{job}", "--rungs", "local", "--html", "{tmp}"], "a directory, not a file"),
    "show a file": (["show", "{file}"], "not a run record (a file, not a record directory)"),
    "show nothing": (["show", "{tmp}/absent"], "not a run record (no such directory)"),
    "localstack port": (["localstack", "status", "--port", "0"], "expected a TCP port (1 to 65535), got '0'"),
}


@pytest.mark.parametrize("case", USAGE.values(), ids=USAGE.keys())
@pytest.mark.unit
def test_bad_usage(workdir: Path, capsys: pytest.CaptureFixture[str], case: tuple[Any, ...]) -> None:
    argv, expected, *hint = case
    job, file = workdir / "job.yaml", workdir / "a-file"
    job.write_text(GOOD)
    file.write_text("not a directory\n")
    records = workdir / "records"
    fill = {"job": job, "tmp": workdir, "file": file}
    argv = [a.format(**fill) for a in argv]
    if argv[0] in ("run", "ladder") and "--records" not in argv:
        argv += ["--records", str(records)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected.format(**fill) in one_error(err)
    if hint:
        assert f"hint: {hint[0]}" in err
    assert not records.exists()


@pytest.mark.parametrize("command", ["run", "ladder"])
@pytest.mark.unit
def test_records_on_a_read_only_file_system(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """Refused before anything runs (root may write anywhere else, so the file system is faked)."""
    job = workdir / "job.yaml"
    job.write_text(GOOD)
    readonly = workdir / "ro"
    readonly.mkdir()
    real_access, real_statvfs = os.access, os.statvfs

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == readonly else real_access(p, mode))
    monkeypatch.setattr(os, "statvfs", lambda p: ReadOnly() if Path(p) == readonly else real_statvfs(p))
    argv = [command, str(job), "--records", str(readonly / "runs")] + (
        ["--rungs", "local"] if command == "ladder" else []
    )
    assert main(argv) == 2
    assert f"{readonly} is on a read-only file system" in one_error(capsys.readouterr().err)
    assert list(readonly.iterdir()) == []


# ---- boto3 requests -------------------------------------------------------------------------------

_IMAGE = '"AlgorithmSpecification": {"TrainingImage": "img"}'
REQUESTS = {
    "not json": ("{not json", "request.json:1:2: not a readable JSON request"),
    "no job name": ('{"HyperParameters": {}}', "TrainingJobName: required by CreateTrainingJob, missing"),
    "hyperparameter not a string": (
        '{"TrainingJobName": "x", "HyperParameters": {"epochs": 3}}',
        "HyperParameters.epochs: expected a string",
    ),
    "code on s3": (
        '{"TrainingJobName": "x", ' + _IMAGE + ', "HyperParameters": {"sagemaker_program": "\\"train.py\\"", '
        '"sagemaker_submit_directory": "\\"s3://b/src.tar.gz\\""}}',
        "HyperParameters.sagemaker_submit_directory is 's3://b/src.tar.gz'",
    ),
    "no S3Uri": (
        '{"TrainingJobName": "x", ' + _IMAGE + ', "InputDataConfig": [{"ChannelName": "train", '
        '"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix"}}}]}',
        "InputDataConfig[0].DataSource.S3DataSource.S3Uri: required by CreateTrainingJob, missing",
    ),
    "instance count not a number": (
        '{"TrainingJobName": "x", ' + _IMAGE + ', "ResourceConfig": {"InstanceCount": "two"}}',
        "ResourceConfig.InstanceCount: Input should be a valid integer",
    ),
    "misspelt field": (
        '{"TrainingJobName": "x", ' + _IMAGE + ', "HyperParameter": {}}',
        "HyperParameter: not a field of CreateTrainingJob; did you mean 'HyperParameters'?",
    ),
    "metric without regex": (
        '{"TrainingJobName": "x", "AlgorithmSpecification": {"TrainingImage": "i", "MetricDefinitions": '
        '[{"Name": "loss"}]}}',
        "AlgorithmSpecification.MetricDefinitions[0].Regex: required by CreateTrainingJob, missing",
    ),
    "bad s3 uri": (
        '{"TrainingJobName": "x", ' + _IMAGE + ', "InputDataConfig": [{"ChannelName": "train", '
        '"DataSource": {"S3DataSource": {"S3Uri": "s3:/x"}}}]}',
        "InputDataConfig[0].DataSource.S3DataSource.S3Uri: 's3:/x' is not an S3 URI",
    ),
    "channel twice": (
        '{"TrainingJobName": "x", ' + _IMAGE + ', "InputDataConfig": ['
        '{"ChannelName": "a", "DataSource": {"S3DataSource": {"S3Uri": "s3://bucket/a"}}}, '
        '{"ChannelName": "a", "DataSource": {"S3DataSource": {"S3Uri": "s3://bucket/b"}}}]}',
        "InputDataConfig[1].ChannelName: 'a' is given twice",
    ),
    "neither image nor program": ('{"TrainingJobName": "x"}', "AlgorithmSpecification.TrainingImage: missing"),
    "job name in job terms": ('{"TrainingJobName": "x_y", ' + _IMAGE + "}", "TrainingJobName: the name 'x_y'"),
    "config not an object": (
        '{"TrainingJobName": "x", ' + _IMAGE + ', "ResourceConfig": "big"}',
        "ResourceConfig: expected an object, got a string",
    ),
}


@pytest.mark.parametrize("content, expected", REQUESTS.values(), ids=REQUESTS.keys())
@pytest.mark.unit
def test_bad_request(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, expected: str) -> None:
    request = tmp_path / "request.json"
    request.write_text(content)
    assert main(["run", "--from-request", str(request), "--records", str(tmp_path / "r")]) == 2
    error = one_error(capsys.readouterr().err)
    assert expected in error
    for job_term in ("instance_count", "channels.", "metric_definitions", "source_dir", "{'"):
        assert job_term not in error  # the request's fields, never the job spec's or an internal dict
    assert not (tmp_path / "r").exists()


@pytest.mark.unit
def test_a_directory_given_as_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--from-request", str(tmp_path), "--records", str(tmp_path / "r")]) == 2
    assert "a directory, not a request file" in one_error(capsys.readouterr().err)


# ---- damaged records: diff and show read whatever directory they are given ------------------------


def _edit_json(relative: str, change: Callable[[Any], Any]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        path = root / relative
        path.write_text(json.dumps(change(json.loads(path.read_text()))))

    return damage


def _without(key: str, inside: str | None = None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def change(data: dict[str, Any]) -> dict[str, Any]:
        (data[inside] if inside else data).pop(key)
        return data

    return change


def _truncate(relative: str, keep: int = 20) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        path = root / relative
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"pid": 1, "host": "algo-1", "argv": ["python", "train.py"]}, indent=1))
        path.write_text(path.read_text()[:keep])

    return damage


def _write(relative: str, text: str) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)

    return damage


def _metric(value: Any) -> Callable[[Path], None]:
    return _edit_json("metrics.json", lambda m: {"loss": {"algo-1": [0.5, value]}})


#: What is damaged, how, and what the error says; ``both``: show reads it too (else diff only).
DAMAGE: dict[str, tuple[Callable[[Path], None], str, bool]] = {
    "no topology": (_edit_json("manifest.json", _without("topology")), "manifest.json: topology: missing", True),
    "topology not an object": (
        _edit_json("manifest.json", lambda m: {**m, "topology": "2x2"}),
        "manifest.json: topology: expected an object, got the string '2x2'",
        True,
    ),
    "no status": (_edit_json("manifest.json", _without("status")), "manifest.json: status: missing", True),
    "unknown status": (
        _edit_json("manifest.json", lambda m: {**m, "status": "great"}),
        "manifest.json: status: expected one of running, succeeded",
        True,
    ),
    "hosts not an object": (
        _edit_json("manifest.json", lambda m: {**m, "hosts": ["algo-1"]}),
        "manifest.json: hosts: expected an object, got a list",
        True,
    ),
    "no job name": (
        _edit_json("manifest.json", _without("name", "job")),
        "manifest.json: job.name: missing",
        True,
    ),
    "world size a word": (
        _edit_json("manifest.json", lambda m: {**m, "topology": {**m["topology"], "world_size": "four"}}),
        "manifest.json: topology.world_size: expected an integer, got the string 'four'",
        True,
    ),
    "manifest a list": (
        _write("manifest.json", "[1, 2]"),
        "manifest.json: the manifest should hold a JSON object",
        True,
    ),
    "manifest cut short": (
        _truncate("manifest.json", 40),
        "manifest.json: the manifest is cut short (truncated)",
        True,
    ),
    "metric not a number": (
        _metric("abc"),
        "metrics.json: loss.algo-1[1]: expected a number, got the string 'abc'",
        True,
    ),
    "metric null": (_metric(None), "metrics.json: loss.algo-1[1]: expected a number, got null", True),
    "metrics a list": (
        _write("metrics.json", "[0.5]"),
        "metrics.json: expected an object {metric: {source: [values]}}",
        True,
    ),
    "metrics cut short": (
        _truncate("metrics.json", 12),
        "metrics.json: the metrics file is cut short (truncated)",
        True,
    ),
    "metrics a directory": (
        lambda root: ((root / "metrics.json").unlink(), (root / "metrics.json").mkdir()),
        "metrics.json: a directory where the record keeps a metrics file",
        True,
    ),
    "summary cut short": (
        _write("artifacts/summary.json", '{"model.tar.gz": {"bytes": 10, "files": {"model.pt": {"si'),
        "artifacts/summary.json: the file is cut short (truncated)",
        False,
    ),
    "partial JSON line": (
        _write(
            "ranks/rank-0.jsonl", '{"t": 1, "kind": "batch", "n": 1}\n{"t": 2, "kind": "ba\n{"t": 3, "kind": "x"}\n'
        ),
        "ranks/rank-0.jsonl:2: not a JSON event",
        False,
    ),
    "event not an object": (
        _write("ranks/rank-0.jsonl", '{"t": 1, "kind": "batch", "n": 1}\n123\n'),
        "ranks/rank-0.jsonl:2: not a probe event: the line is the number 123, not an object",
        False,
    ),
    "batches event without its rows": (
        _write("ranks/rank-0.jsonl", '{"t": 1, "kind": "batches", "columns": ["n", "size"], "rows": [[1, 16], [2]]}\n'),
        "ranks/rank-0.jsonl:1: a batches event without its columns and rows",
        False,
    ),
    "process record cut short": (
        _truncate("processes/algo-1-100.json", 30),
        "processes/algo-1-100.json: the process record is cut short (truncated)",
        False,
    ),
    "fingerprint cut short": (
        _write("hosts/algo-1/fingerprint.json", '{"python": "3.1'),
        "hosts/algo-1/fingerprint.json: the file is cut short (truncated)",
        False,
    ),
}


@pytest.mark.parametrize("damage, expected, both", DAMAGE.values(), ids=DAMAGE.keys())
@pytest.mark.unit
def test_a_damaged_record_is_named_never_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: Callable[[Path], None], expected: str, both: bool
) -> None:
    good = make_record(tmp_path, "local", losses=[1.0, 0.5])
    bad = make_record(tmp_path, "docker", losses=[1.0, 0.5])
    damage(bad.root)
    for argv in (["diff", str(good.root), str(bad.root)], ["show", str(bad.root)] if both else None):
        if argv is None:
            continue
        assert main(argv) == 2, argv
        error = one_error(capsys.readouterr().err)
        assert f"{bad.root}/{expected}" in error, argv
    if not both:
        assert main(["show", str(bad.root)]) == 0  # show does not read these files; it must not fail either


@pytest.mark.slow
def test_show_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`harness show R | head -1`: the reader goes away; no BrokenPipeError, exit 0."""
    record = make_record(tmp_path, "local", losses=[1.0, 0.5])
    manifest = json.loads((record.root / "manifest.json").read_text())
    manifest["rung_facts"] = {f"fact{i}": "a long fact " * 20 for i in range(400)}  # far more than a pipe holds
    (record.root / "manifest.json").write_text(json.dumps(manifest))
    show = subprocess.Popen(
        [sys.executable, "-m", "harness", "show", str(record.root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert show.stdout is not None and show.stderr is not None
    assert show.stdout.readline().startswith(record.root.name.encode())
    show.stdout.close()  # as head does once it has its line
    err = show.stderr.read().decode()
    assert show.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err and err == ""


@pytest.mark.unit
def test_request_roundtrip(tmp_path: Path, scenarios: Path) -> None:
    """A v2-style request (JSON-encoded hyperparameters) gives back the job it describes."""
    from harness.spec.request import load_request

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


@pytest.mark.unit
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


@pytest.mark.slow
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
