"""Airflow (#16): the training request read from the DAG itself, and the pre-flight task.

Tests marked ``airflow`` need the ``airflow`` extra (apache-airflow 3 and the Amazon provider) and
skip with the reason without it. They load the example DAGs (examples/airflow/) with Airflow's
``DagBag`` in this process for ``--from-airflow``, and run DAGs with ``dag.test()`` in a
subprocess, as Airflow's docs show, on a SQLite metadata database made once per session
(``airflow db migrate``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.backends.base import RungOptions
from harness.cli import main
from harness.spec.job import JobSpec, load_job
from harness.testing import Canned, canned_rungs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "airflow"
REFERENCE = ROOT / "scenarios" / "ddp_csv"
FAULT = ROOT / "scenarios" / "fault_bool_hyperparameter"
EXAMPLE_DAGS = {"sagemaker_training.py": "ddp_csv_sagemaker_training", "python_boto3.py": "ddp_csv_python_boto3"}
HAS_AIRFLOW = importlib.util.find_spec("airflow") is not None
NO_AIRFLOW = "needs the airflow extra: pip install '.[airflow]' (apache-airflow 3, Amazon provider)"


@pytest.fixture(scope="session")
def airflow_session(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """AIRFLOW_HOME in a temporary directory, with a SQLite metadata database migrated once."""
    if not HAS_AIRFLOW:
        pytest.skip(NO_AIRFLOW)
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return env


@pytest.fixture
def airflow_env(airflow_session: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """This test's process pointed at the session's Airflow home (read when Airflow is imported)."""
    for name, value in airflow_session.items():
        monkeypatch.setenv(name, value)
    yield airflow_session


def _dag_test(dag_file: Path, env: dict[str, str], dags_folder: Path) -> subprocess.CompletedProcess[str]:
    """``python DAG_FILE``: the file's ``dag.test()``, with the DAG's folder as Airflow's DAG bundle."""
    return subprocess.run(
        [sys.executable, str(dag_file)],
        env={**os.environ, **env, "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder), "HARNESS_PROGRESS_EVERY": "0"},
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ---- without Airflow -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_core_never_imports_airflow() -> None:
    code = (
        "import sys, harness, harness.cli, harness.ladder.climbing, harness.airflow\n"
        "loaded = [m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(HAS_AIRFLOW, reason="Airflow is installed here")
@pytest.mark.unit
def test_from_airflow_without_airflow_says_what_to_install(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "--from-airflow", str(EXAMPLES / "sagemaker_training.py"), "--task", "train", "--dry-run"]
    assert main(argv) == 2
    err = _error(capsys)
    assert "needs Apache Airflow" in err and "[airflow]" in err


# ---- the request, read from the DAG ------------------------------------------------------------------------


@pytest.mark.airflow
@pytest.mark.parametrize("dag", EXAMPLE_DAGS)
def test_the_example_dags_send_the_reference_job(dag: str, airflow_env: dict[str, str]) -> None:
    """Both ways of writing the request give the reference job's YAML, field for field; the
    templated name is rendered for the logical date given."""
    from harness.airflow import training_request

    read = training_request(EXAMPLES / dag, "train", logical_date="2026-03-04T05:06:07+00:00")
    job = read.job(source_dir=REFERENCE / "src")
    reference = load_job(REFERENCE / "job.yaml")
    assert job.name == "ddp-csv-20260304T050607"
    assert job.model_dump(exclude={"name"}) == reference.model_dump(exclude={"name"})
    assert read.dag_id == EXAMPLE_DAGS[dag] and read.other_calls == ()


@pytest.mark.airflow
def test_a_naive_logical_date_is_in_the_dags_time_zone(airflow_env: dict[str, str]) -> None:
    from harness.airflow import training_request

    read = training_request(EXAMPLES / "sagemaker_training.py", "train", logical_date="2026-03-04")
    assert read.request["TrainingJobName"] == "ddp-csv-20260304T000000"
    assert read.request["ResourceConfig"]["InstanceCount"] == 2  # rendered "2", parsed as the operator does


@pytest.mark.airflow
@pytest.mark.parametrize("dag", EXAMPLE_DAGS)
def test_ladder_from_airflow_climbs_the_yaml_job(dag: str, airflow_env: dict[str, str], tmp_path: Path) -> None:
    """The job read from the DAG is the job file's, but for its templated name, and the CLI climbs
    it (on canned rungs: the pre-flight tests below climb it for real, inside Airflow)."""
    yaml_job = load_job(REFERENCE / "job.yaml")
    given: list[JobSpec] = []

    def respond(job: JobSpec, rung: str, options: RungOptions) -> Canned:
        given.append(job)
        return Canned()

    report = tmp_path / "verdict.json"
    argv = ["ladder", "--from-airflow", str(EXAMPLES / dag), "--task", "train", "--source-dir", str(REFERENCE / "src")]
    argv += ["--rungs", "single,local", "--records", str(tmp_path / "runs"), "--json", str(report)]
    with canned_rungs(respond, ["single", "local"]):
        assert main(argv) == 0
    assert json.loads(report.read_text())["rungs"] == ["single", "local"]
    single, local = given
    assert local.name.startswith(yaml_job.name + "-") and local.model_copy(update={"name": yaml_job.name}) == yaml_job
    assert single.world_size == 1 and single.hyperparameters == yaml_job.hyperparameters


def _essentials(report: dict[str, object]) -> dict[str, object]:
    findings = report.get("findings") or []
    assert isinstance(findings, list)
    return {
        "outcome": report["outcome"],
        "rungs": report["rungs"],
        "first_rung": report.get("first_rung"),
        "causes": sorted(str(f.get("cause") or f.get("kind")) for f in findings),
    }


def _write(directory: Path, name: str, *sources: str) -> Path:
    path = directory / name
    path.write_text("".join(textwrap.dedent(source) for source in sources))
    return path


_HEADER = """\
    import pendulum
    from airflow.sdk import DAG
    from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTrainingOperator
    from airflow.providers.standard.operators.python import PythonOperator, ExternalPythonOperator
    from airflow.providers.standard.operators.empty import EmptyOperator

    START = pendulum.datetime(2026, 1, 1, tz="UTC")
    CONFIG = {
        "TrainingJobName": "bad",
        "HyperParameters": {"epochs": "2", "sagemaker_program": "train.py",
                            "sagemaker_submit_directory": "s3://bucket/code.tar.gz"},
        "ResourceConfig": {"InstanceType": "ml.c5.xlarge", "InstanceCount": 1},
    }
"""

#: DAG files and what the harness says about them: one line, naming the DAG file, the DAG, the task
#: and the field.
BAD_DAGS = {
    "template": (
        """
        with DAG("bad", schedule=None, start_date=START):
            SageMakerTrainingOperator(task_id="train", config={
                **CONFIG, "HyperParameters": {**CONFIG["HyperParameters"], "epochs": "{{ params.nope.epochs }}"}})
        """,
        "train",
        "DAG 'bad', task 'train': config.HyperParameters.epochs: the template does not render",
    ),
    "field": (
        """
        with DAG("bad", schedule=None, start_date=START):
            SageMakerTrainingOperator(task_id="train", config={
                **CONFIG, "ResourceConfig": {"InstanceType": "ml.c5.xlarge", "InstanceCount": 0}})
        """,
        "train",
        "DAG 'bad', task 'train': ResourceConfig.InstanceCount:",
    ),
    "raises": (
        """
        def submit():
            raise ValueError("no role configured")
        with DAG("bad", schedule=None, start_date=START):
            PythonOperator(task_id="train", python_callable=submit)
        """,
        "train",
        "DAG 'bad', task 'train': submit raised ValueError before calling create_training_job: no role configured",
    ),
    "no request": (
        """
        def submit():
            import boto3
            boto3.client("sagemaker").list_training_jobs()
        with DAG("bad", schedule=None, start_date=START):
            PythonOperator(task_id="train", python_callable=submit)
        """,
        "train",
        "submit returned without calling a SageMaker client's create_training_job; its boto3 calls: "
        "sagemaker.ListTrainingJobs",
    ),
    "elsewhere": (
        """
        def submit():
            pass
        with DAG("bad", schedule=None, start_date=START):
            ExternalPythonOperator(task_id="train", python_callable=submit, python="/usr/bin/python3")
        """,
        "train",
        "DAG 'bad', task 'train': ExternalPythonOperator runs its callable in another Python",
    ),
    "not a training task": (
        """
        with DAG("bad", schedule=None, start_date=START):
            EmptyOperator(task_id="train")
        """,
        "train",
        "DAG 'bad', task 'train': EmptyOperator sends no training request",
    ),
    "no such task": (
        """
        with DAG("bad", schedule=None, start_date=START):
            SageMakerTrainingOperator(task_id="train", config=CONFIG)
        """,
        "trian",
        "no task 'trian' in DAG 'bad'; did you mean 'train'?",
    ),
    "two dags": (
        """
        for name in ("one", "two"):
            with DAG(name, schedule=None, start_date=START):
                SageMakerTrainingOperator(task_id="train", config=CONFIG)
        """,
        "train",
        "task 'train' is in several DAGs (one, two)",
    ),
    "import error": (
        """
        import no_such_module_here
        """,
        "train",
        "the DAG file does not import: ModuleNotFoundError: No module named 'no_such_module_here'",
    ),
}


@pytest.mark.airflow
@pytest.mark.parametrize("case", BAD_DAGS)
def test_bad_dags_are_one_error_naming_the_dag_task_and_field(
    case: str, airflow_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body, task, expected = BAD_DAGS[case]
    dag = _write(tmp_path, "dag.py", _HEADER, body)
    argv = ["run", "--from-airflow", str(dag), "--task", task, "--source-dir", str(REFERENCE / "src"), "--dry-run"]
    assert main(argv) == 2
    err = _error(capsys)
    assert err.startswith(f"harness: error: {dag}: ") and expected in err, err
    assert len(err.strip().splitlines()) == 2  # the error and its hint


@pytest.mark.airflow
def test_a_callable_is_stopped_at_create_training_job_and_its_other_calls_answered(
    airflow_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing reaches AWS (no credentials here): an upload before the submit is answered empty by
    the stub, the submit is captured, and what the callable does after it never runs."""
    from harness.airflow import training_request

    dag = _write(
        tmp_path,
        "dag.py",
        _HEADER,
        """
        def submit(ds_nodash):
            import boto3
            boto3.client("s3").put_object(Bucket="bucket", Key="code.tar.gz", Body=b"")
            sm = boto3.client("sagemaker", region_name="eu-west-1")
            sm.create_training_job(**{**CONFIG, "TrainingJobName": f"job-{ds_nodash}"})
            raise AssertionError("never reached: the stub stops the callable at create_training_job")
        with DAG("two", schedule=None, start_date=START):
            PythonOperator(task_id="train", python_callable=submit)
        with DAG("one", schedule=None, start_date=START):
            SageMakerTrainingOperator(task_id="train", config=CONFIG)
        """,
    )
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    read = training_request(dag, "two/train", logical_date="2026-03-04")
    assert read.request["TrainingJobName"] == "job-20260304"
    assert read.other_calls == ("s3.PutObject",)
    assert read.source == "the callable submit of PythonOperator"


# ---- the pre-flight task, under real Airflow -------------------------------------------------------------


def _harness_dir(logs: Path, dag_id: str) -> Path:
    found = sorted((logs / "harness" / f"dag_id={dag_id}").glob("run_id=*/task_id=preflight/attempt=*"))
    assert found, f"no reports under {logs}"
    return found[-1]


@pytest.mark.airflow
@pytest.mark.slow
@pytest.mark.parametrize("dag", EXAMPLE_DAGS)
def test_preflight_passes_on_the_reference_job(dag: str, airflow_session: dict[str, str]) -> None:
    done = _dag_test(EXAMPLES / dag, airflow_session, EXAMPLES)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    assert "Parity harness: **parity**" in log  # the verdict, as Markdown, in the task log
    kept = _harness_dir(Path(airflow_session["AIRFLOW__LOGGING__BASE_LOG_FOLDER"]), EXAMPLE_DAGS[dag])
    assert json.loads((kept / "verdict.json").read_text())["outcome"] == "parity"
    assert (kept / "report.html").is_file() and "parity" in (kept / "verdict.md").read_text()
    assert len(list((kept / "runs").iterdir())) == 2  # single and local, each a record


@pytest.mark.airflow
@pytest.mark.slow
def test_preflight_fails_the_dag_run_on_a_planted_fault(airflow_session: dict[str, str], tmp_path: Path) -> None:
    """A TaskFlow task submits the bool-hyperparameter fault (argparse type=bool): the pre-flight
    task fails, the training task never runs, the run fails; the reports go where it was told."""
    dags, out = tmp_path / "dags", tmp_path / "out"
    dags.mkdir()
    dag = _write(
        dags,
        "fault_dag.py",
        f"""
        import pendulum
        from airflow.sdk import DAG, task

        from harness.airflow import HarnessPreflightOperator

        with DAG("fault_bool", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
            @task
            def train(ts_nodash=None):
                import boto3
                boto3.client("sagemaker").create_training_job(
                    TrainingJobName=f"fault-bool-{{ts_nodash}}",
                    RoleArn="arn:aws:iam::111122223333:role/SageMakerExecution",
                    HyperParameters={{"epochs": "2", "normalize": "false", "learning-rate": "0.05",
                                     "sagemaker_program": "train.py",
                                     "sagemaker_submit_directory": "s3://bucket/fault/sourcedir.tar.gz"}},
                    InputDataConfig=[{{"ChannelName": "train", "DataSource": {{"S3DataSource": {{
                        "S3DataType": "S3Prefix", "S3Uri": {(REFERENCE / "data").as_uri()!r}}}}}}}],
                    ResourceConfig={{"InstanceType": "ml.c5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30}},
                    StoppingCondition={{"MaxRuntimeInSeconds": 300}},
                    AlgorithmSpecification={{"TrainingInputMode": "File", "MetricDefinitions": [
                        {{"Name": "train:loss", "Regex": r"step=\\d+ loss=([0-9.eE+-]+)"}}]}},
                )

            preflight = HarnessPreflightOperator(
                task_id="preflight", training_task_id="train", source_dir={str(FAULT / "src")!r},
                rungs=["single", "local"], destination={str(out)!r},
            )
            preflight >> train()

        if __name__ == "__main__":
            run = dag.test(mark_success_pattern="^train$")
            print("STATES", {{ti.task_id: str(ti.state) for ti in run.get_task_instances()}})
            raise SystemExit(0 if run.state == "success" else 1)
        """,
    )
    done = _dag_test(dag, airflow_session, dags)
    log = done.stdout + done.stderr
    assert done.returncode == 1, log[-6000:]
    assert "STATES {'preflight': 'failed', 'train': 'upstream_failed'}" in log, log[-6000:]
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["outcome"] == "diverged"
    assert "hyperparameter-type" in [finding["cause"] for finding in verdict["findings"]]
    yaml = tmp_path / "yaml.json"  # the fault's own job file says the same
    argv = ["ladder", str(FAULT / "job.yaml"), "--rungs", "single,local", "--records", str(tmp_path / "runs")]
    assert main([*argv, "--json", str(yaml)]) == 1
    assert _essentials(verdict) == _essentials(json.loads(yaml.read_text()))
    assert (out / "report.html").is_file() and "hyperparameter-type" in (out / "verdict.md").read_text()
    assert "AirflowFailException" in log and "departs" in log
