"""The `local` rung with real torch processes: records, self-spawning jobs, /opt/ml, stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from terminal import terminal_signals

from harness.backends import get_backend
from harness.cli import main
from harness.judge.verdict import judge
from harness.record.run_record import RunRecord
from harness.report import to_html, to_json, to_markdown, to_text
from harness.spec.job import load_job

pytestmark = pytest.mark.slow


def _processes_with(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


@pytest.fixture(scope="module")
def reference_record(tmp_path_factory: pytest.TempPathFactory) -> RunRecord:
    job = load_job(Path(__file__).resolve().parent.parent / "scenarios" / "ddp_csv" / "job.yaml")
    return get_backend("local").run(job, tmp_path_factory.mktemp("records"))


def test_reference_job_record(reference_record: RunRecord) -> None:
    record = reference_record
    manifest = record.manifest
    assert record.status == "succeeded" and manifest.complete
    assert {h: r.exit_code for h, r in manifest.hosts.items()} == {"algo-1": 0, "algo-2": 0}
    assert sorted(manifest.ranks) == ["0", "1", "2", "3"]
    assert {manifest.ranks[r].host for r in ("2", "3")} == {"algo-2"}
    assert sorted(record.rank_logs()) == [0, 1, 2, 3]
    first = record.rank_logs()[0].read_text().splitlines()
    assert any("step=0 loss=" in line for line in first)
    assert first[0][:4].isdigit() and first[0].split(" ", 1)[0].endswith("Z")  # timestamped
    losses = record.metrics()["train:loss"]["algo-1"]
    assert len(losses) == 64 and losses[-1] < losses[0]
    received = record.root / "hosts" / "algo-2" / "received"
    assert json.loads((received / "resourceconfig.json").read_text())["current_host"] == "algo-2"
    assert json.loads((received / "env.json").read_text())["SM_CURRENT_HOST"] == "algo-2"
    command = json.loads((received / "command.json").read_text())["argv"]
    assert command[:3] == ["torchrun", "--nnodes", "2"] and "--node_rank" in command
    with tarfile.open(record.root / "artifacts" / "model.tar.gz") as tar:
        assert tar.getnames() == ["model.pt"]
    worker = [json.loads(p.read_text()) for p in (record.root / "processes").glob("*.json")]
    assert any(p["rank"] == "3" and p["cwd"] == "/opt/ml/code" for p in worker)


def test_self_spawning_job_rendezvous_on_algo_1(scenarios: Path, records: Path) -> None:
    record = get_backend("local").run(load_job(scenarios / "self_spawn" / "job.yaml"), records)
    assert record.status == "succeeded", (record.root / "hosts" / "algo-1" / "log.txt").read_text()
    assert len(record.metrics()["train:loss"]["algo-1"]) == 32  # 2 epochs x 1024 rows / 4 ranks / 16


def test_hardcoded_opt_ml_writes_the_hosts_tree_not_the_machine(scenarios: Path, records: Path) -> None:
    existed = Path("/opt/ml").exists()
    record = get_backend("local").run(load_job(scenarios / "hardcoded_opt_ml" / "job.yaml"), records)
    assert record.status == "succeeded"
    with tarfile.open(record.root / "artifacts" / "model.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["algo-1.txt", "algo-2.txt"]
        text = tar.extractfile("algo-2.txt").read().decode()  # type: ignore[union-attr]
    assert "hostname algo-2" in text
    assert Path("/opt/ml").exists() == existed
    assert "mounted on /opt/ml" in record.manifest.rung_facts["opt_ml"]


def _write_job(tmp_path: Path, script: str, **extra: object) -> Path:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "train.py").write_text(script)
    lines = ["name: scratch", "source_dir: src", "entry_point: train.py"]
    lines += [f"{key}: {value}" for key, value in extra.items()]
    job = tmp_path / "job.yaml"
    job.write_text("\n".join(lines) + "\n")
    return job


def test_failing_job_gives_failed_record_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = _write_job(tmp_path, "raise ValueError('bad shape in layer 3')\n")
    assert main(["run", str(job), "--records", str(tmp_path / "records")]) == 1
    record = RunRecord.load(next((tmp_path / "records").iterdir()))
    assert record.status == "failed"
    result = record.manifest.hosts["algo-1"]
    assert result.exit_code == 1 and result.failure_written_by == "launcher"
    assert "ValueError: bad shape in layer 3" in (result.failure_reason or "")


def _orphan_script(marker: str) -> str:
    """A job that starts a grandchild carrying ``marker`` in its command line, says ready, sleeps."""
    return (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', '{marker}'])\n"
        "print('ready', flush=True)\ntime.sleep(300)\n"
    )


def test_max_run_stops_every_process(tmp_path: Path) -> None:
    marker = f"harness-sleeper-{os.getpid()}"
    job = load_job(_write_job(tmp_path, _orphan_script(marker), max_run=2, instance_count=2))
    record = get_backend("local").run(job, tmp_path / "records")
    assert record.status == "timeout" and record.manifest.complete
    assert _processes_with(marker) == []


@pytest.mark.parametrize(
    "command, signum, exit_code",
    [
        (["run"], signal.SIGINT, 130),
        (["run"], signal.SIGTERM, 143),
        (["run"], signal.SIGHUP, 129),
        (["ladder", "--rungs", "local,local"], signal.SIGTERM, 143),
    ],
)
def test_a_signal_stops_everything_and_marks_the_record(
    command: list[str], signum: int, exit_code: int, tmp_path: Path
) -> None:
    marker = f"harness-signal-{os.getpid()}-{signum}-{command[0]}"
    job = _write_job(tmp_path, _orphan_script(marker), instance_count=2)
    harness = subprocess.Popen(
        [sys.executable, "-m", "harness", *command, str(job), "--records", str(tmp_path / "records"), "-v"],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=terminal_signals,
    )
    assert harness.stderr is not None
    for line in harness.stderr:
        if "ready" in line:
            break
    assert _processes_with(marker), "the job's grandchild should be running"
    harness.send_signal(signum)
    assert harness.wait(timeout=60) == exit_code
    assert f"stopped by {signal.Signals(signum).name}" in harness.stderr.read()
    record = RunRecord.load(next((tmp_path / "records").iterdir()))
    assert record.status == "interrupted" and record.manifest.complete
    assert _processes_with(marker) == []
    assert not Path(record.manifest.rung_facts["work_dir"]).exists()


def test_ladder_of_the_same_rung_twice_is_parity(
    scenarios: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The noise floor of CPU gloo: a rung run twice gives bit-identical curves (tolerance 0)."""
    code = main(
        [
            "ladder",
            str(scenarios / "ddp_csv" / "job.yaml"),
            "--rungs",
            "local,local",
            "--rtol",
            "0",
            "--atol",
            "0",
            "--records",
            str(tmp_path),
            "--json",
            str(tmp_path / "v.json"),
        ]
    )
    assert code == 0, capsys.readouterr().out
    assert json.loads((tmp_path / "v.json").read_text())["outcome"] == "parity"


@pytest.fixture
def without_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rung as it runs for a user who may not create namespaces."""
    from harness.backends import local

    monkeypatch.setattr(local, "_namespaces_unavailable", lambda: "not permitted here (test)")


@pytest.mark.usefixtures("without_namespaces")
def test_degraded_rung_still_runs_distributed_jobs(scenarios: Path, records: Path) -> None:
    record = get_backend("local").run(load_job(scenarios / "ddp_csv" / "job.yaml"), records)
    assert record.status == "succeeded"
    facts = record.manifest.rung_facts
    assert facts["adapted"]["MASTER_ADDR"] == "127.0.0.1" and facts["namespaces"].startswith("none")
    env = json.loads((record.root / "hosts" / "algo-1" / "received" / "env.json").read_text())
    assert env["SM_MODEL_DIR"].endswith("algo-1/opt_ml/model")


@pytest.mark.usefixtures("without_namespaces")
def test_degraded_rung_refuses_writes_to_the_real_opt_ml(scenarios: Path, records: Path) -> None:
    record = get_backend("local").run(load_job(scenarios / "hardcoded_opt_ml" / "job.yaml"), records)
    assert record.status == "failed"
    # whichever host is refused first fails the job, and the other is stopped before it says why
    reasons = [result.failure_reason or "" for result in record.manifest.hosts.values()]
    assert any("this rung does not emulate /opt/ml" in reason for reason in reasons), reasons
    assert not Path("/opt/ml/model/algo-1.txt").exists() and not Path("/opt/ml/model/algo-2.txt").exists()


def test_one_failing_host_stops_the_others(tmp_path: Path) -> None:
    """As on SageMaker, a job fails as soon as one host fails: algo-1 does not wait for ever."""
    script = (
        "import json, sys, time\n"
        "host = json.load(open('/opt/ml/input/config/resourceconfig.json'))['current_host']\n"
        "sys.exit(3) if host == 'algo-2' else time.sleep(300)\n"
    )
    job = load_job(_write_job(tmp_path, script, instance_count=2, max_run=120))
    record = get_backend("local").run(job, tmp_path / "records")
    assert record.status == "failed"  # not "timeout": algo-1 was stopped when algo-2 failed
    assert record.manifest.hosts["algo-2"].exit_code == 3


def test_relative_records_dir_is_made_absolute(
    scenarios: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--records runs` (the default) must work for rungs that mount the record into containers."""
    monkeypatch.chdir(tmp_path)
    record = get_backend("local").run(load_job(scenarios / "hardcoded_opt_ml" / "job.yaml"), Path("runs"))
    assert record.root.is_absolute() and record.root.parent == tmp_path / "runs"


def test_sharded_local_channel_gives_each_host_its_share_and_the_diff_shows_it(tmp_path: Path) -> None:
    """ShardedByS3Key on a local directory: each host its share, as once the SDK uploaded it; two
    runs whose hosts saw different data have the difference named, file by file."""
    from harness.judge.checks import compare
    from harness.judge.protocol import CheckContext, Tolerance
    from harness.spec.job import JobSpec

    data, source = tmp_path / "data", tmp_path / "src"
    data.mkdir()
    source.mkdir()
    for index in range(5):
        (data / f"part-{index}.csv").write_text(f"x\n{index}\n")
    (source / "train.py").write_text("import os\nprint(sorted(os.listdir('/opt/ml/input/data/train')))\n")
    runs = {}
    for distribution in ("FullyReplicated", "ShardedByS3Key"):
        job = JobSpec(
            name="shards",
            source_dir=source,
            entry_point="train.py",
            instance_count=2,
            channels={"train": {"source": str(data), "distribution": distribution}},
        )
        runs[distribution] = get_backend("local").run(job, tmp_path / "records")
        assert runs[distribution].status == "succeeded"
    sharded = runs["ShardedByS3Key"]
    assert "['part-1.csv', 'part-3.csv']" in (sharded.root / "hosts" / "algo-2" / "log.txt").read_text()
    assert list(sharded.read_json("hosts/algo-1/received/channels.json")["train"]["files"]) == [
        "part-0.csv",
        "part-2.csv",
        "part-4.csv",
    ]
    assert (data / "part-0.csv").is_file()  # the source is never touched
    (finding,) = [
        f
        for f in compare(runs["FullyReplicated"], sharded, CheckContext(Tolerance(0, 0, 0, 0)))
        if f.cause == "channel-data-differs"
    ]
    assert "algo-2 train: 5 files, 20 bytes -> 2 files, 8 bytes" in finding.evidence
    assert "  only on local: part-0.csv, part-2.csv, part-4.csv" in finding.evidence


def test_secrets_a_job_prints_are_scrubbed_from_everything_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that prints its environment (debugging) must not put credentials into the record:
    neither the machine's (inherited on this rung) nor the job's own secret variables."""
    from harness.spec.job import JobSpec

    machine_secret, job_secret = "machine-secret-4f1c9e2a", "job-secret-9b7d3c1e"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", machine_secret)
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text(
        "import os, sys\nfor k, v in sorted(os.environ.items()):\n    print(k, v)\n"
        "if sys.argv[1:] == ['--fail', 'yes']:\n"
        "    raise RuntimeError(f\"login refused for {os.environ['WANDB_API_KEY']} and \"\n"
        "                       f\"{os.environ['AWS_SECRET_ACCESS_KEY']!r}\")\n"
    )
    job = JobSpec(
        name="leaky",
        source_dir=source,
        entry_point="train.py",
        distribution="torchrun",
        environment={"WANDB_API_KEY": job_secret},
    )
    failing = job.model_copy(update={"hyperparameters": {"fail": "yes"}})
    records = [
        get_backend("local").run(job, tmp_path / "records"),
        get_backend("local").run(failing, tmp_path / "records"),
    ]
    assert [record.status for record in records] == ["succeeded", "failed"]
    assert "WANDB_API_KEY <redacted>" in (records[0].root / "hosts" / "algo-1" / "log.txt").read_text()
    assert "login refused for <redacted>" in records[1].manifest.model_dump_json(include={"ranks"})
    verdict = judge(records)
    reports = tmp_path / "reports"
    reports.mkdir()
    for render in (to_text, to_json, to_html, to_markdown):
        (reports / render.__name__).write_text(render(verdict))
    for path in [*(tmp_path / "records").rglob("*"), *reports.iterdir()]:
        if path.is_file():
            data = path.read_bytes()
            assert machine_secret.encode() not in data and job_secret.encode() not in data, path


def test_gc_stops_what_a_killed_harness_left(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGKILL leaves the launchers running and the record 'running'; `harness gc` ends both."""
    marker = f"harness-killed-{os.getpid()}"
    job = _write_job(tmp_path, _orphan_script(marker), instance_count=2)
    harness = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", str(job), "--records", str(tmp_path / "records"), "-v"],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=terminal_signals,
    )
    assert harness.stderr is not None
    ready = 0
    for line in harness.stderr:
        ready += "ready" in line
        if ready == 2:
            break
    harness.kill()
    harness.wait(timeout=30)
    left = _processes_with(marker)
    assert len(left) == 2, left  # both hosts' grandchildren run on without the harness
    record = next((tmp_path / "records").iterdir())
    work = Path(RunRecord.load(record).manifest.rung_facts["work_dir"])
    assert work.is_dir()
    assert main(["gc"]) == 0
    assert f"run {record.name}: " in capsys.readouterr().out
    assert _processes_with(marker) == [] and not work.exists()
    assert RunRecord.load(record).status == "interrupted"
