"""The `sagemaker-local` rung: the SageMaker SDK v3 `ModelTrainer` in local-container mode.

Planning needs nothing. The rest needs the SDK (`pip install '.[sagemaker]'`), a Docker engine
and docker compose, and is skipped with the reason where one is missing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from docker import DockerClient

from harness.backends import sagemaker_sdk
from harness.backends.sagemaker_local import SageMakerLocalBackend, SageMakerLocalOptions
from harness.backends.sagemaker_local.collect import read_sm_training_env
from harness.backends.sagemaker_local.plan import SDK_NETWORK
from harness.backends.sagemaker_sdk import ENTRYPOINT, sdk_missing_reason
from harness.diff.protocol import Tolerance
from harness.jobspec import Channel, JobSpec, load_job
from harness.record import RunRecord
from harness.verdict import judge

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "scenarios" / "ddp_csv" / "job.yaml"


@pytest.fixture(scope="module")
def engine(engine: DockerClient) -> DockerClient:
    """The Docker engine, with the SDK and compose too; tests are skipped, with the reason, otherwise."""
    reason = SageMakerLocalBackend(SageMakerLocalOptions(gpus=False)).unavailable_reason()
    if reason:
        pytest.skip(reason)
    return engine


def _left_behind(engine: DockerClient, record: RunRecord) -> list[str]:
    """Containers of the run (by its label and by its compose project), its image tag, and the
    SDK's network where no other container holds it."""
    facts = record.manifest["rung_facts"]
    found = [c.name for c in engine.containers.list(all=True, filters={"label": f"harness.run_id={record.root.name}"})]
    found += [
        c.name
        for c in engine.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={facts['compose_project']}"}
        )
    ]
    found += [f"image {facts['run_image']}" for _ in engine.images.list(name=facts["run_image"])]
    for network in engine.networks.list(names=[SDK_NETWORK]):
        network.reload()
        if not network.attrs.get("Containers"):
            found.append(f"network {network.name}")
    if Path(facts["work_dir"]).exists():
        found.append(facts["work_dir"])
    return found


def test_plan_is_a_dry_run_of_what_the_sdk_writes() -> None:
    job = load_job(REFERENCE)
    plan = SageMakerLocalBackend(SageMakerLocalOptions(gpus=False)).plan(job)
    host = plan.hosts["algo-2"]
    assert host.command == ENTRYPOINT
    assert json.loads(host.files["input/config/resourceconfig.json"]) == {
        "current_host": "algo-2",
        "hosts": ["algo-1", "algo-2"],
        "network_interface_name": "ethwe",
        "current_instance_type": "local_cpu",
    }
    assert list(json.loads(host.files["input/config/inputdataconfig.json"])) == [
        "train",
        "harness_probe",
        "harness_record",
        "code",
        "sm_drivers",
    ]
    assert json.loads(host.files["input/config/hyperparameters.json"])["shuffle"] == "true"
    assert host.env["HARNESS_PROBE_DIR"] == "/opt/ml/input/data/harness_record"
    assert "ethwe" in plan.facts["network_interface_name"] and "64m" in plan.facts["shm_size"]
    assert not Path(plan.facts["work_dir"]).exists()


def test_jobs_the_sdk_cannot_run_as_sagemaker_would_are_refused_with_the_reason() -> None:
    backend = SageMakerLocalBackend(SageMakerLocalOptions(gpus=False))
    byo = JobSpec(name="byo", image="team/trainer:1")
    assert "`train` argument" in (backend.unsupported_reason(byo) or "")
    sharded = Channel(source="s3://team-data/train/", distribution="ShardedByS3Key")
    s3 = JobSpec(name="s3", source_dir=ROOT, entry_point="x.py", channels={"train": sharded})
    assert "ShardedByS3Key" in (backend.unsupported_reason(s3) or "")
    clash = JobSpec(name="clash", source_dir=ROOT, entry_point="x.py", channels={"code": Channel(source=str(ROOT))})
    assert "code" in (backend.unsupported_reason(clash) or "")


def test_a_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sagemaker_sdk, "sdk_version", lambda: None)
    assert "[sagemaker]" in (sdk_missing_reason() or "")
    assert "[sagemaker]" in (SageMakerLocalBackend(SageMakerLocalOptions(gpus=False)).unavailable_reason() or "")


def test_sm_training_env_is_read_as_the_driver_writes_it(tmp_path: Path) -> None:
    path = tmp_path / "sm_training.env"
    path.write_text("export SM_HPS='{\"a\": 1}'\nexport SM_HOSTS='[\"algo-1\"]'\nnot a line\n")
    assert read_sm_training_env(path) == {"SM_HPS": '{"a": 1}', "SM_HOSTS": '["algo-1"]'}


@pytest.mark.docker
@pytest.mark.sagemaker_local
@pytest.mark.slow
def test_reference_job_through_the_sdk_matches_local_exactly(
    engine: DockerClient, torch_image: str, tmp_path: Path
) -> None:
    job = load_job(REFERENCE)
    started = time.monotonic()
    record = SageMakerLocalBackend(SageMakerLocalOptions(gpus=False)).run(job, tmp_path)
    wall = time.monotonic() - started
    assert record.status == "succeeded", record.host_log("algo-1").read_text()[-3000:]
    local = RunRecord.load(_local_record(job, tmp_path))
    # Hosts, their exit and what the SDK wrote for each of them.
    assert list(record.manifest["hosts"]) == ["algo-1", "algo-2"]
    assert all(h["exit_code"] == 0 for h in record.manifest["hosts"].values())
    for host in ("algo-1", "algo-2"):
        received = record.root / "hosts" / host / "received"
        assert json.loads((received / "resourceconfig.json").read_text())["current_host"] == host
        assert json.loads((received / "resourceconfig.json").read_text())["network_interface_name"] == "ethwe"
        env = json.loads((received / "env.json").read_text())
        assert env["SM_CURRENT_HOST"] == host and env["TRAINING_JOB_NAME"].startswith("ddp-csv-")
        assert json.loads((received / "container_env.json").read_text())["HARNESS_PROBE_DIR"].endswith("harness_record")
        log = record.host_log(host).read_text().splitlines()
        assert log[0].split(" ", 1)[0].endswith("Z") and "Training Container Execution Completed" in log[-1]
    # The probe got into every process, with the right host.
    assert {r["host"] for r in record.manifest["ranks"].values()} == {"algo-1", "algo-2"}
    assert sorted(record.rank_logs()) == [0, 1, 2, 3]
    assert record.manifest["rung_facts"]["probe_reached"]["not_reached"] == "none"
    # gloo on CPU: bit-identical curve and weights, so the verdict holds at zero tolerance.
    loss = record.metrics()["train:loss"]["algo-1"]
    assert len(loss) == 64 and loss == local.metrics()["train:loss"]["algo-1"]
    model = record.read_json("artifacts/summary.json")["model.tar.gz"]["files"]["model.pt"]
    assert model["sha256"] == local.read_json("artifacts/summary.json")["model.tar.gz"]["files"]["model.pt"]["sha256"]
    assert model["hosts"] == ["algo-1"]  # rank 0 wrote it into the shared dir; the probe says who
    assert (record.root / "sdk" / "docker-compose.yaml").is_file()
    assert judge([local, record], tolerance=Tolerance(0, 0, 0, 0)).outcome == "parity"
    assert _left_behind(engine, record) == []
    print(f"sagemaker-local reference job: {wall:.1f} s")


def _local_record(job: JobSpec, records: Path) -> Path:
    from harness.backends import get_backend

    return get_backend("local").run(job, records).root


def _job(directory: Path, script: str, max_run: int = 600) -> JobSpec:
    (directory / "src").mkdir(parents=True)
    (directory / "src" / "train.py").write_text(textwrap.dedent(script))
    return JobSpec(
        name="sm-small", source_dir=directory / "src", entry_point="train.py", instance_count=2, max_run=max_run
    )


@pytest.mark.docker
@pytest.mark.sagemaker_local
@pytest.mark.slow
def test_a_failing_host_is_recorded_and_nothing_is_left(engine: DockerClient, torch_image: str, tmp_path: Path) -> None:
    job = _job(
        tmp_path,
        """\
        import json, os, sys
        host = os.environ["SM_CURRENT_HOST"]
        open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], host + ".txt"), "w").write(host)
        sys.exit(3 if host == "algo-2" else 0)
    """,
    )
    record = SageMakerLocalBackend(SageMakerLocalOptions(gpus=False, image=torch_image)).run(job, tmp_path / "records")
    assert record.status == "failed"
    hosts = record.manifest["hosts"]
    assert hosts["algo-1"]["exit_code"] == 0 and hosts["algo-2"]["exit_code"] == 3
    assert "CalledProcessError" in hosts["algo-2"]["failure_reason"]  # the v3 driver writes its own traceback
    per_host = record.read_json("artifacts/summary.json")["output.tar.gz"]["per_host"]
    assert per_host == {
        "algo-1": {"algo-1.txt": per_host["algo-1"]["algo-1.txt"]},
        "algo-2": {"algo-2.txt": per_host["algo-2"]["algo-2.txt"]},
    }
    assert _left_behind(engine, record) == []


@pytest.mark.docker
@pytest.mark.sagemaker_local
@pytest.mark.slow
def test_max_run_stops_the_sdk_run(engine: DockerClient, torch_image: str, tmp_path: Path) -> None:
    # max_run leaves the containers time to start on a loaded 2-CPU machine; the job would sleep 600 s
    job = _job(tmp_path, "import time\nprint('up', flush=True)\ntime.sleep(600)\n", max_run=25)
    started = time.monotonic()
    options = SageMakerLocalOptions(gpus=False, image=torch_image, stop_grace_s=1)
    record = SageMakerLocalBackend(options).run(job, tmp_path / "records")
    assert record.status == "timeout"
    assert time.monotonic() - started < 300
    assert "up" in record.host_log("algo-1").read_text()
    assert _left_behind(engine, record) == []


_RUNNER = """
import sys
from pathlib import Path
from harness.backends.sagemaker_local import SageMakerLocalBackend, SageMakerLocalOptions
from harness.jobspec import JobSpec
job = JobSpec(name="sm-sleeper", source_dir=Path(sys.argv[1]), entry_point="train.py", instance_count=2)
SageMakerLocalBackend(SageMakerLocalOptions(gpus=False, image=sys.argv[3], stop_grace_s=1)).run(job, Path(sys.argv[2]))
"""


@pytest.mark.docker
@pytest.mark.sagemaker_local
@pytest.mark.slow
def test_ctrl_c_leaves_no_container_network_or_image(engine: DockerClient, torch_image: str, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("import time\nprint('up', flush=True)\ntime.sleep(600)\n")
    records = tmp_path / "records"
    proc = subprocess.Popen([sys.executable, "-c", _RUNNER, str(tmp_path / "src"), str(records), torch_image], cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            logs = list(records.glob("*/hosts/algo-*/log.txt"))
            if len(logs) == 2 and all("up" in p.read_text() for p in logs):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the job never started")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) != 0
    finally:
        proc.kill()
    record = RunRecord.load(next(records.iterdir()))
    assert record.status == "interrupted"
    assert _left_behind(engine, record) == []
