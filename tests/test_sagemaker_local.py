"""The `sagemaker-local` rung: the SageMaker SDK v3 `ModelTrainer` in local-container mode.

Planning needs nothing. The rest needs the SDK (`pip install '.[sagemaker]'`), a Docker engine
and docker compose, and is skipped with the reason where one is missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from docker import DockerClient
from terminal import terminal_signals

from harness.backends import sagemaker_sdk
from harness.backends.sagemaker_local import SageMakerLocalBackend, SageMakerLocalOptions
from harness.backends.sagemaker_local.collect import read_sm_training_env
from harness.backends.sagemaker_local.isolation import isolated, rename_network
from harness.backends.sagemaker_local.plan import SDK_NETWORK, run_network
from harness.backends.sagemaker_sdk import ENTRYPOINT, sdk_missing_reason
from harness.cli import main
from harness.errors import RungFailed
from harness.judge.protocol import Tolerance
from harness.judge.verdict import judge
from harness.record.run_record import RunRecord
from harness.spec.job import Channel, JobSpec, load_job

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
    """Containers of the run (by its label and by its compose project), its network (by label and
    by name), its image tag, its compose processes, its work dir, and the SDK's shared network
    where no container holds it."""
    facts = record.manifest.rung_facts
    found = [c.name for c in engine.containers.list(all=True, filters={"label": f"harness.run_id={record.root.name}"})]
    found += [
        c.name
        for c in engine.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={facts['compose_project']}"}
        )
    ]
    found += [f"image {facts['run_image']}" for _ in engine.images.list(name=facts["run_image"])]
    found += [  # the tag's build steps (once one per label) stayed behind as untagged images
        f"dangling image {i.short_id}"
        for i in engine.images.list(filters={"dangling": True, "label": f"harness.pid={os.getpid()}"})
    ]
    found += [
        f"network {n.name}" for n in engine.networks.list(filters={"label": f"harness.run_id={record.root.name}"})
    ]
    network = facts.get("adapted", {}).get("network", SDK_NETWORK)
    for found_network in engine.networks.list(names=[network]):
        found_network.reload()
        if found_network.name == network and (network != SDK_NETWORK or not found_network.attrs.get("Containers")):
            found.append(f"network {found_network.name}")
    found += [f"process {pid}" for pid in _processes_naming(facts["work_dir"])]
    if Path(facts["work_dir"]).exists():
        found.append(facts["work_dir"])
    return found


def _processes_naming(text: str) -> list[int]:
    """Processes whose command line holds ``text`` (compose, given the run's compose file)."""
    out = subprocess.run(["ps", "-eww", "-o", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return [int(line.split(None, 1)[0]) for line in out.splitlines() if text in line and "ps -eww" not in line]


@pytest.mark.unit
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


@pytest.mark.unit
def test_jobs_the_sdk_cannot_run_as_sagemaker_would_are_refused_with_the_reason() -> None:
    backend = SageMakerLocalBackend(SageMakerLocalOptions(gpus=False))
    byo = JobSpec(name="byo", image="team/trainer:1")
    assert "`train` argument" in (backend.unsupported_reason(byo) or "")
    sharded = Channel(source="s3://team-data/train/", distribution="ShardedByS3Key")
    s3 = JobSpec(name="s3", source_dir=ROOT, entry_point="x.py", channels={"train": sharded})
    assert "ShardedByS3Key" in (backend.unsupported_reason(s3) or "")
    # A local directory too: local mode drops the distribution and gives every host every file.
    directory = Channel(source=str(ROOT), distribution="ShardedByS3Key")
    local = JobSpec(name="dir", source_dir=ROOT, entry_point="x.py", channels={"train": directory})
    assert "every host gets every file" in (backend.unsupported_reason(local) or "")
    replicated = JobSpec(name="dir", source_dir=ROOT, entry_point="x.py", channels={"train": Channel(source=str(ROOT))})
    assert backend.unsupported_reason(replicated) is None
    clash = JobSpec(name="clash", source_dir=ROOT, entry_point="x.py", channels={"code": Channel(source=str(ROOT))})
    assert "code" in (backend.unsupported_reason(clash) or "")


@pytest.mark.unit
def test_a_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sagemaker_sdk, "sdk_version", lambda: None)
    assert "[sagemaker]" in (sdk_missing_reason() or "")
    assert "[sagemaker]" in (SageMakerLocalBackend(SageMakerLocalOptions(gpus=False)).unavailable_reason() or "")


@pytest.mark.unit
def test_sm_training_env_is_read_as_the_driver_writes_it(tmp_path: Path) -> None:
    path = tmp_path / "sm_training.env"
    path.write_text("export SM_HPS='{\"a\": 1}'\nexport SM_HOSTS='[\"algo-1\"]'\nnot a line\n")
    assert read_sm_training_env(path) == {"SM_HPS": '{"a": 1}', "SM_HOSTS": '["algo-1"]'}


def _sdk_container(root: Path) -> Any:
    """The SDK's own ``_LocalContainer`` for a two-host run in ``root``."""
    local_container = pytest.importorskip("sagemaker.train.local.local_container", reason="the [sagemaker] extra")
    return local_container._LocalContainer(
        training_job_name="j",
        instance_type="local_cpu",
        instance_count=2,
        image="img",
        container_root=str(root),
        input_data_config=[],
        environment={},
        hyper_parameters={},
        container_entrypoint=["a"],
        container_arguments=[],
    )


@pytest.mark.unit
def test_each_run_gets_a_network_of_its_own_and_nothing_else_changes(tmp_path: Path) -> None:
    """The SDK's compose file, as the SDK writes it, with only the network's name (and labels)
    changed for a run in progress; any other caller of the SDK gets the file untouched."""
    ours, other = tmp_path / "harness-sagemaker-local-0a1b2c3d", tmp_path / "someone-elses"
    ours.mkdir(), other.mkdir()
    untouched = _sdk_container(other)._generate_compose_file({"A": "1"}, ["/x:/y"])
    with isolated(ours, {"harness.run_id": "r1"}) as isolation:
        assert isolation.network == "sagemaker-local-0a1b2c3d" == run_network(ours)
        assert isolation.facts["adapted"] == {"network": isolation.network}
        content = _sdk_container(ours)._generate_compose_file({"A": "1"}, ["/x:/y"])
        again = _sdk_container(other)._generate_compose_file({"A": "1"}, ["/x:/y"])
    written = yaml.safe_load((ours / "docker-compose.yaml").read_text())
    assert written == content
    assert written["networks"] == {
        SDK_NETWORK: {"name": "sagemaker-local-0a1b2c3d", "labels": {"harness.run_id": "r1"}}
    }
    ran, sdk = (json.dumps(c["services"], sort_keys=True) for c in (written, untouched))
    assert ran.replace(str(ours), "ROOT") == sdk.replace(str(other), "ROOT")  # aliases, mounts, env, command
    assert written["services"]["algo-2"]["networks"] == {SDK_NETWORK: {"aliases": ["algo-2"]}}
    assert again == untouched == yaml.safe_load((other / "docker-compose.yaml").read_text())
    assert _sdk_container(ours)._generate_compose_file({}, [])["networks"] == {SDK_NETWORK: {"name": SDK_NETWORK}}


@pytest.mark.unit
def test_a_compose_file_without_the_sdks_network_fails_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(RungFailed, match="no 'sagemaker-local' network"):
        rename_network({"services": {}}, tmp_path, "sagemaker-local-x", {})


@pytest.mark.slow
def test_without_the_hook_runs_take_turns_under_a_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the SDK's compose file cannot be adapted, a second run waits for the first, says
    for whom, and gives up after its bound; the lock goes with the process that held it."""
    from harness.backends.sagemaker_local import isolation as module

    lock = tmp_path / "engine.lock"
    monkeypatch.setattr(module, "_sdk_class", lambda: None)
    monkeypatch.setattr(module, "lock_path", lambda: lock)
    holder = subprocess.Popen(
        [sys.executable, "-c", _LOCK_HOLDER, str(lock)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        said: list[str] = []
        started = time.monotonic()
        with (
            pytest.raises(RungFailed, match=f"another sagemaker-local run \\(pid {holder.pid}\\)"),
            isolated(tmp_path / "run", {}, wait_s=1, report=said.append),
        ):
            pass
        assert 1 <= time.monotonic() - started < 10
        assert said == [
            f"waiting for another sagemaker-local run (pid {holder.pid}) on this Docker engine, at most 1 s"
        ]
    finally:
        holder.kill()
        holder.wait()
    with isolated(tmp_path / "run", {}, wait_s=1, report=said.append) as isolation:  # killed: the lock is free
        assert isolation.network == SDK_NETWORK and isolation.facts["waited_for_other_run_s"] < 1
        assert lock.read_text().strip() == str(os.getpid())


_LOCK_HOLDER = """
import sys, time
from pathlib import Path
from harness.backends.sagemaker_local.isolation import engine_lock
with engine_lock(path=Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


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
    assert list(record.manifest.hosts) == ["algo-1", "algo-2"]
    assert all(h.exit_code == 0 for h in record.manifest.hosts.values())
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
    assert {r.host for r in record.manifest.ranks.values()} == {"algo-1", "algo-2"}
    assert sorted(record.rank_logs()) == [0, 1, 2, 3]
    assert record.manifest.rung_facts["probe_reached"]["not_reached"] == "none"
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
        if host == "algo-1":  # the record channel is writable by the job: a forged manifest, a link out
            probe = os.environ["HARNESS_PROBE_DIR"]
            open(os.path.join(probe, "manifest.json"), "w").write(json.dumps({"status": "succeeded", "forged": 1}))
            os.makedirs(os.path.join(probe, "processes"), exist_ok=True)
            os.symlink("/etc/passwd", os.path.join(probe, "processes", "algo-1-999999.json"))
        sys.exit(3 if host == "algo-2" else 0)
    """,
    )
    record = SageMakerLocalBackend(SageMakerLocalOptions(gpus=False, image=torch_image)).run(job, tmp_path / "records")
    assert record.status == "failed" and "forged" not in record.manifest.as_file()
    ignored = record.manifest.rung_facts["probe_files_ignored"]
    assert "manifest.json" in ignored and "processes/algo-1-999999.json" in ignored
    assert not (record.root / "processes" / "algo-1-999999.json").exists()
    assert any(record.root.glob("processes/algo-1-*.json"))  # the probe's own files are there
    hosts = record.manifest.hosts
    assert hosts["algo-1"].exit_code == 0 and hosts["algo-2"].exit_code == 3
    assert "CalledProcessError" in hosts["algo-2"].failure_reason  # the v3 driver writes its own traceback
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
    job = _job(tmp_path, "import time\nprint('up', flush=True)\ntime.sleep(600)\n", max_run=60)
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
from harness.spec.job import JobSpec
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
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUNNER, str(tmp_path / "src"), str(records), torch_image],
        cwd=ROOT,
        preexec_fn=terminal_signals,
    )
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


def _once_both_hosts_are_up(records: Path, harness: subprocess.Popen[Any]) -> Path:
    """The run's record once both hosts printed ``up`` (a job that then sleeps); fails where the
    harness exits first or the job never starts within 300 s."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        logs = list(records.glob("**/hosts/algo-*/log.txt"))
        if len(logs) == 2 and all("up" in p.read_text() for p in logs):
            (record_dir,) = {p.parents[2] for p in logs}
            return record_dir
        assert harness.poll() is None, harness.communicate()[1]
        time.sleep(0.5)
    pytest.fail("the job never started")


@pytest.mark.docker
@pytest.mark.sagemaker_local
@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "ladder"])
def test_sigterm_mid_job_stops_everything_and_marks_the_record(
    engine: DockerClient, torch_image: str, tmp_path: Path, command: str
) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("import time\nprint('up', flush=True)\ntime.sleep(600)\n")
    (tmp_path / "job.yaml").write_text(
        f"name: sm-sigterm\nsource_dir: src\nentry_point: train.py\ninstance_count: 2\nimage: {torch_image}\n"
    )
    records = tmp_path / "records"
    rung = ["--rung", "sagemaker-local"] if command == "run" else ["--rungs", "sagemaker-local"]
    harness = subprocess.Popen(
        [sys.executable, "-m", "harness", command, str(tmp_path / "job.yaml"), *rung, "--records", str(records)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        preexec_fn=terminal_signals,
    )
    try:
        record_dir = _once_both_hosts_are_up(records, harness)
        facts = RunRecord.load(record_dir).manifest.rung_facts
        assert _processes_naming(facts["work_dir"]), "compose should be running"
        labelled = engine.networks.list(filters={"label": f"harness.run_id={record_dir.name}"})
        assert [n.name for n in labelled] == [facts["adapted"]["network"]]  # the run's own, which gc can find
        harness.send_signal(signal.SIGTERM)
        assert harness.wait(timeout=120) == 143
        assert harness.stderr is not None and "stopped by SIGTERM" in harness.stderr.read()
    finally:
        if harness.poll() is None:
            harness.kill()
    record = RunRecord.load(record_dir)
    assert record.status == "interrupted" and record.manifest.complete
    assert _left_behind(engine, record) == []


@pytest.mark.docker
@pytest.mark.sagemaker_local
@pytest.mark.slow
def test_two_ladders_started_together_both_give_a_verdict(
    engine: DockerClient, torch_image: str, tmp_path: Path
) -> None:
    """SDK local mode names one network for every run, with the same algo-N aliases: two runs at
    once collided (the network 'ambiguous (2 matches)', or ranks joining the other run). Each run
    now has a network of its own."""
    ladders = []
    for name in ("a", "b"):
        out = tmp_path / name
        out.mkdir()
        argv = [sys.executable, "-m", "harness", "ladder", str(REFERENCE), "--rungs", "local,sagemaker-local"]
        argv += ["--records", str(out / "records"), "--json", str(out / "verdict.json")]
        ladders.append((out, subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
    outputs = [proc.communicate(timeout=1500)[0].decode(errors="replace") for _, proc in ladders]
    for (out, proc), output in zip(ladders, outputs, strict=True):
        assert proc.returncode == 0, output[-3000:]
        assert json.loads((out / "verdict.json").read_text())["outcome"] == "parity", output[-3000:]
    runs = [RunRecord.load(next((out / "records").glob("*-sagemaker-local-*"))) for out, _ in ladders]
    assert all(run.status == "succeeded" for run in runs)
    first, second = (run.manifest for run in runs)
    assert first.started_at < (second.ended_at or "") and second.started_at < (first.ended_at or ""), "they overlapped"
    networks = {run.manifest.rung_facts["adapted"]["network"] for run in runs}
    assert len(networks) == 2
    for run in runs:
        compose = yaml.safe_load((run.root / "sdk" / "docker-compose.yaml").read_text())
        assert compose["networks"][SDK_NETWORK]["name"] == run.manifest.rung_facts["adapted"]["network"]
        assert _left_behind(engine, run) == []


@pytest.mark.docker
@pytest.mark.sagemaker_local
@pytest.mark.slow
def test_gc_removes_what_a_killed_harness_left(
    engine: DockerClient, torch_image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL leaves compose, its containers, the run's network and image tag and the SDK's work
    dir; `harness gc` removes them all and marks the record."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("import time\nprint('up', flush=True)\ntime.sleep(600)\n")
    (tmp_path / "job.yaml").write_text(
        f"name: sm-killed\nsource_dir: src\nentry_point: train.py\ninstance_count: 2\nimage: {torch_image}\n"
    )
    records = tmp_path / "records"
    harness = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", str(tmp_path / "job.yaml"), "--rung", "sagemaker-local"]
        + ["--records", str(records)],
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        preexec_fn=terminal_signals,
    )
    try:
        record_dir = _once_both_hosts_are_up(records, harness)
    finally:
        harness.kill()
        harness.wait(timeout=30)
    record = RunRecord.load(record_dir)
    assert _left_behind(engine, record), "a killed harness cleans nothing up"
    assert main(["gc"]) == 0
    assert f"run {record_dir.name}: " in capsys.readouterr().out
    assert _left_behind(engine, record) == []
    assert RunRecord.load(record_dir).status == "interrupted"
