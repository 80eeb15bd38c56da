"""The `docker` rung on a real engine: parity with `local`, /dev/shm, nothing left behind, gc."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from docker import DockerClient
from docker.errors import NotFound
from terminal import terminal_signals

from harness.backends import get_backend
from harness.backends.containers import gc, host_gpu_count, run_labels
from harness.backends.docker_network import container_name, network_name
from harness.record.run_record import RunRecord
from harness.spec.job import JobSpec, load_job

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"


def _labelled(what: str, label: str) -> list[str]:
    """`docker ps -a` / `docker network ls` filtered by ``label``, as a user would check."""
    argv = {
        "containers": ["docker", "ps", "-a", "--format", "{{.Names}}"],
        "networks": ["docker", "network", "ls", "--format", "{{.Name}}"],
    }[what]
    out = subprocess.run([*argv, "--filter", f"label={label}"], capture_output=True, text=True, check=True).stdout
    return out.split()


@pytest.mark.unit
def test_plan_is_a_dry_run_with_the_machine_settings() -> None:
    """No engine needed: planning starts, builds and pulls nothing."""
    job = load_job(SCENARIOS / "ddp_csv" / "job.yaml")
    plan = get_backend("docker", gpus=False, shm_size="64m").plan(job)
    assert plan.facts["shm_size"] == "64m" and plan.facts["shm_size_bytes"] == 64 * 2**20
    assert plan.facts["ulimits_requested"] == {"memlock": -1, "stack": 67108864}
    assert "to be built" in plan.facts["image"]
    assert plan.hosts["algo-2"].command[:3] == ["torchrun", "--nnodes", "2"]
    assert plan.hosts["algo-2"].env["SM_NETWORK_INTERFACE_NAME"] == "eth0"
    assert not Path(plan.facts["work_dir"]).exists()


@pytest.mark.unit
def test_an_unreachable_engine_is_a_reason_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")  # discard port: refused at once
    reason = get_backend("docker", gpus=False).unavailable_reason()
    assert reason is not None and "no Docker engine answers" in reason


@pytest.mark.docker
@pytest.mark.slow
def test_reference_job_on_two_containers_matches_local_exactly(
    engine: DockerClient, torch_image: str, tmp_path: Path
) -> None:
    job = load_job(SCENARIOS / "ddp_csv" / "job.yaml")
    seen: dict[str, Any] = {}

    def watch(host: str, line: str) -> None:  # called from the log streams while the job runs
        if "step=0 " in line and not seen:
            try:
                run_id = next(tmp_path.glob("ddp-csv-docker-*")).name
                containers = engine.containers.list(filters={"label": f"harness.run_id={run_id}"})
                seen["containers"] = {
                    c.attrs["Config"]["Hostname"]: c.attrs["NetworkSettings"]["Networks"] for c in containers
                }
                seen["network"] = engine.networks.get(network_name(run_id)).attrs
            except Exception as exc:  # a failing callback must not end the log stream it runs in
                seen["error"] = exc

    docker_record = get_backend("docker").run(job, tmp_path, progress=watch)
    local_record = get_backend("local").run(job, tmp_path)
    assert docker_record.status == "succeeded", docker_record.host_log("algo-1").read_text()[-3000:]
    assert local_record.status == "succeeded"
    assert "error" not in seen, seen
    # Two real containers, running at once, each on the run's own network under its host name.
    network = seen["network"]
    assert network["Driver"] == "bridge" and network["Labels"]["harness.managed"] == "true"
    assert sorted(seen["containers"]) == ["algo-1", "algo-2"]
    for host, networks in seen["containers"].items():
        assert list(networks) == [network["Name"]] and host in networks[network["Name"]]["Aliases"]
    assert {docker_record.manifest.ranks[r].host for r in ("2", "3")} == {"algo-2"}
    # gloo on CPU reduces in the same order for the same world size, wherever the ranks run, so the
    # curve (and the saved weights) must be bit-identical: tolerance 0.
    docker_loss = docker_record.metrics()["train:loss"]["algo-1"]
    assert len(docker_loss) == 64
    assert docker_loss == local_record.metrics()["train:loss"]["algo-1"]
    assert _model_digest(docker_record) == _model_digest(local_record)


def _model_digest(record: RunRecord) -> str:
    return str(record.read_json("artifacts/summary.json")["model.tar.gz"]["files"]["model.pt"]["sha256"])


@pytest.mark.docker
@pytest.mark.slow
def test_shm_hungry_job_needs_more_than_dockers_64m(engine: DockerClient, torch_image: str, tmp_path: Path) -> None:
    job = load_job(SCENARIOS / "fault_shm_exhaustion" / "job.yaml")
    small = get_backend("docker", shm_size="64m").run(job, tmp_path)
    default = get_backend("docker").run(job, tmp_path)
    assert small.status == "failed"
    assert small.manifest.rung_facts["shm_size"] == "64m"
    # The toolkit's failure file holds the head of the traceback; the worker's own error is in the log.
    assert "DataLoader worker" in (small.manifest.hosts["algo-1"].failure_reason or "")
    log = small.host_log("algo-1").read_text()
    assert re.search(r"shared memory|No space left on device|Bus error", log), log[-3000:]
    assert default.status == "succeeded", default.host_log("algo-1").read_text()[-3000:]
    assert default.manifest.rung_facts["shm_size_bytes"] >= 2**30
    assert len(default.metrics()["train:loss"]["algo-1"]) == 6


@pytest.mark.docker
@pytest.mark.slow
def test_bring_your_own_image_runs_its_train_program(engine: DockerClient, tmp_path: Path) -> None:
    from harness.runtime.images import bootstrap_base_image, build_image

    train = (
        '#!/bin/sh\necho "train on $(hostname) as $TRAINING_JOB_NAME, SM_HOSTS=${SM_HOSTS:-unset}"\n'
        "echo ok > /opt/ml/model/byo.txt\n"
    )
    (tmp_path / "context").mkdir()
    (tmp_path / "context" / "train").write_text(train)
    image = build_image(
        engine,
        base=bootstrap_base_image(engine),
        context=tmp_path / "context",
        steps=["COPY train /usr/local/bin/train", "RUN chmod +x /usr/local/bin/train"],
        name="harness/test-byo",
    )
    try:
        job = JobSpec(name="byo", image=image, instance_count=2)
        record = get_backend("docker").run(job, tmp_path / "records")
    finally:
        engine.images.remove(image, force=True)
    assert record.status == "succeeded", record.host_log("algo-1").read_text()
    # The platform layer only: SM_* variables come from the image's own launcher, as on the service.
    assert "train on algo-2 as byo, SM_HOSTS=unset" in record.host_log("algo-2").read_text()
    assert record.read_json("hosts/algo-1/received/command.json")["argv"] == ["train"]
    assert record.read_json("artifacts/summary.json")["model.tar.gz"]["per_host"]["algo-2"]["byo.txt"]


_SLEEPER = """
import sys
from pathlib import Path
from harness.backends import get_backend
from harness.spec.job import load_job
get_backend("docker", image=sys.argv[3], stop_grace_s=2).run(load_job(Path(sys.argv[1])), Path(sys.argv[2]))
"""


def _sleeper_job(directory: Path, max_run: int) -> Path:
    """Two hosts that print one line and then sleep for ten minutes."""
    (directory / "src").mkdir()
    (directory / "src" / "train.py").write_text("import time\nprint('up', flush=True)\ntime.sleep(600)\n")
    (directory / "job.yaml").write_text(
        textwrap.dedent(f"""\
        name: sleeper
        source_dir: src
        entry_point: train.py
        instance_count: 2
        max_run: {max_run}
    """)
    )
    return directory / "job.yaml"


@pytest.mark.docker
@pytest.mark.slow
def test_max_run_stops_every_container(engine: DockerClient, torch_image: str, tmp_path: Path) -> None:
    record = get_backend("docker", image=torch_image, stop_grace_s=1).run(
        load_job(_sleeper_job(tmp_path, 3)), tmp_path / "records"
    )
    assert record.status == "timeout"
    assert {host: result.exit_code for host, result in record.manifest.hosts.items()} == {
        "algo-1": 137,
        "algo-2": 137,
    }  # python as PID 1 ignores SIGTERM, so SIGKILL ends it, as under `docker stop`
    assert _labelled("containers", f"harness.run_id={record.root.name}") == []


@pytest.mark.docker
@pytest.mark.slow
def test_ctrl_c_mid_run_leaves_no_container_or_network(engine: DockerClient, torch_image: str, tmp_path: Path) -> None:
    job = _sleeper_job(tmp_path, 900)
    records = tmp_path / "records"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLEEPER, str(job), str(records), torch_image], cwd=ROOT, preexec_fn=terminal_signals
    )
    try:
        run_id = _wait_for_running_containers(engine, records, count=2)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _labelled("containers", f"harness.run_id={run_id}") == []
    assert _labelled("networks", f"harness.run_id={run_id}") == []
    manifest = RunRecord.load(records / run_id).manifest
    assert manifest.status == "interrupted"
    assert not Path(manifest.rung_facts["work_dir"]).exists()


def _wait_for_running_containers(engine: DockerClient, records: Path, count: int, timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = list(records.glob("sleeper-docker-*"))
        if runs:
            running = engine.containers.list(filters={"label": f"harness.run_id={runs[0].name}", "status": "running"})
            if len(running) == count:
                return runs[0].name
        time.sleep(0.2)
    raise AssertionError(f"{count} containers of the run did not start within {timeout_s:g} s")


@pytest.mark.docker
def test_gc_removes_leftovers_of_runs_that_are_over(engine: DockerClient, torch_image: str) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    ).stdout.strip()
    dead_run, live_run = f"gc-test-dead-{os.getpid()}", f"gc-test-live-{os.getpid()}"
    work = tempfile.mkdtemp(prefix="harness-docker-")  # a killed harness leaves its work dir too
    leftover_labels = {**run_labels(dead_run), "harness.pid": dead, "harness.work_dir": work}
    leftover = engine.containers.create(torch_image, ["true"], labels=leftover_labels)
    network = engine.networks.create(f"harness-{dead_run}", labels=leftover_labels)
    live = engine.containers.create(torch_image, ["true"], labels=run_labels(live_run))
    owner = " ".join(f"{k}={json.dumps(v)}" for k, v in leftover_labels.items() if k != "harness.run_id")
    untagged, _ = engine.images.build(fileobj=io.BytesIO(f"FROM {torch_image}\nLABEL {owner}\n".encode()), rm=True)
    try:
        removed = gc(engine)
        assert f"container {leftover.name}" in removed and f"network harness-{dead_run}" in removed
        assert f"image {untagged.short_id}" in removed  # an untagged image a run's build step left
        assert _labelled("containers", f"harness.run_id={dead_run}") == []
        assert _labelled("networks", f"harness.run_id={dead_run}") == []
        assert _labelled("containers", f"harness.run_id={live_run}") == [live.name]  # its harness still runs
        assert not Path(work).exists()
    finally:
        for remove in (lambda: leftover.remove(force=True), lambda: live.remove(force=True), network.remove):
            with contextlib.suppress(NotFound):
                remove()


@pytest.mark.gpu
@pytest.mark.docker
def test_gpus_are_split_between_hosts_and_nccl_is_verbose(engine: DockerClient) -> None:
    reason = get_backend("docker", gpus=True).unavailable_reason()
    if reason:
        pytest.skip(reason)
    job = load_job(SCENARIOS / "ddp_csv" / "job.yaml").model_copy(update={"environment": {"NCCL_ALGO": "Ring"}})
    plan = get_backend("docker", gpus=True).plan(job)
    gpus = plan.facts["gpus"]["devices"]
    assert set(gpus) == {"algo-1", "algo-2"} and all(gpus.values())
    assert plan.facts["gpus"]["shared_by_all_hosts"] == (len(gpus["algo-1"]) == host_gpu_count())
    env = plan.hosts["algo-1"].env
    assert env["NCCL_DEBUG"] == "INFO" and env["NCCL_ALGO"] == "Ring"
    assert env["SM_NUM_GPUS"] == str(len(gpus["algo-1"]))
    assert json.loads(env["SM_HOSTS"]) == ["algo-1", "algo-2"]


def _script_on_docker(tmp_path: Path, image: str, script: str, **spec: Any) -> RunRecord:
    """``script`` as a job's ``train.py``, run on the docker rung in ``image``."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text(script)
    job = JobSpec(source_dir=source, entry_point="train.py", **spec)
    return get_backend("docker", gpus=False, image=image).run(job, tmp_path / "records")


_REVERSE_LOOKUP = """\
import socket

address = socket.gethostbyname(socket.gethostname())
# c10d's store asks this of every client's address (IPv4-mapped, on its dual-stack socket).
print("peer name:", socket.getnameinfo((f"::ffff:{address}", 0, 0, 0), 0)[0])
"""


@pytest.mark.docker
@pytest.mark.slow
def test_a_peer_address_has_a_name_however_long_the_job_name(
    engine: DockerClient, torch_image: str, tmp_path: Path
) -> None:
    # With a network name over 63 characters Docker's DNS answers no reverse lookup: getnameinfo
    # failed after 10 s (EAI_AGAIN), once per c10d store connection.
    name = "a-job-name-as-long-as-sagemaker-allows-which-is-63-characters-x"
    record = _script_on_docker(tmp_path, torch_image, _REVERSE_LOOKUP, name=name)
    log = record.host_log("algo-1").read_text()
    assert record.status == "succeeded", log[-3000:]
    assert f"peer name: {container_name(record.manifest.run_id, 'algo-1')}." in log, log[-3000:]


_LATE_LOOKUP = """\
import os, socket, time

if os.environ["SM_CURRENT_HOST"] == "algo-2":
    time.sleep(5)  # algo-1 has ended and its container stopped
    print("algo-1 is at", socket.gethostbyname("algo-1"), flush=True)
"""


@pytest.mark.docker
@pytest.mark.slow
def test_a_host_that_ended_first_still_resolves_for_its_peers(
    engine: DockerClient, torch_image: str, tmp_path: Path
) -> None:
    # Docker's DNS forgets a stopped container: on a loaded CI the toolkit of algo-2 asked for algo-1
    # 0.1 s after algo-1 had ended, and retried for 15 minutes. A SageMaker instance outlives its program.
    record = _script_on_docker(tmp_path, torch_image, _LATE_LOOKUP, name="late-lookup", instance_count=2, max_run=120)
    log = record.host_log("algo-2").read_text()
    assert record.status == "succeeded", log[-3000:]
    ended = {host: record.manifest.hosts[host].ended_at for host in ("algo-1", "algo-2")}
    assert ended["algo-1"] < ended["algo-2"], ended
    assert re.search(r"algo-1 is at \d+\.\d+\.\d+\.\d+", log), log[-3000:]


@pytest.mark.unit
def test_network_and_container_names_are_one_dns_label_each_and_name_their_run() -> None:
    assert network_name("short-run") == "harness-short-run"
    assert container_name("short-run", "algo-2") == "short-run-algo-2"
    long = "x" * 80
    assert len(network_name(long)) == len(container_name(long, "algo-1")) == 63
    assert network_name(long).startswith("harness-xxx") and container_name(long, "algo-1").startswith("xxx")
    assert container_name(long, "algo-1") != container_name(long, "algo-2")


@pytest.mark.unit
def test_labels_name_the_owner() -> None:
    labels = run_labels("r")
    assert labels["harness.managed"] == "true" and labels["harness.run_id"] == "r"
    assert labels["harness.pid"] == str(os.getpid()) and labels["harness.hostname"] == socket.gethostname()


@pytest.mark.docker
@pytest.mark.slow
def test_job_secrets_printed_in_a_container_are_scrubbed(
    engine: DockerClient, torch_image: str, tmp_path: Path
) -> None:
    secret = "job-secret-2c8e5f7a"
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text("import os\nprint('key', os.environ['WANDB_API_KEY'])\n")
    job = JobSpec(name="leaky", source_dir=source, entry_point="train.py", environment={"WANDB_API_KEY": secret})
    record = get_backend("docker", gpus=False, image=torch_image).run(job, tmp_path / "records")
    assert record.status == "succeeded"
    assert "key <redacted>" in record.host_log("algo-1").read_text()
    assert [p for p in record.root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()] == []


_STUCK = """\
import time
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
tensor = torch.ones(1)
dist.all_reduce(tensor)  # once together: the ranks are up
if dist.get_rank() == 1:
    time.sleep(600)  # rank 1 never reaches the second all_reduce
dist.all_reduce(tensor)
"""


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("rung", ["local", "docker"])
def test_a_stuck_job_is_stopped_with_every_ranks_stack(
    rung: str, engine: DockerClient, torch_image: str, tmp_path: Path
) -> None:
    """Hang detection on both rungs: no progress for hang_after_s, stacks dumped in every host's
    process (in a container, by the container's own pid), status hung, the stuck line named."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(_STUCK)
    job = JobSpec(
        name="stuck",
        source_dir=tmp_path / "src",
        entry_point="train.py",
        instance_count=2,
        distribution="torchrun",
        max_run=300,
    )
    options = {"image": torch_image, "stop_grace_s": 1} if rung == "docker" else {}
    record = get_backend(rung, hang_after_s=5, **options).run(job, tmp_path / "records")
    assert record.status == "hung"
    assert record.manifest.rung_facts["hang_after_s"] == 5
    stacks = {rank: (record.root / "ranks" / f"rank-{rank}.stacks.txt").read_text() for rank in (0, 1)}
    assert 'train.py", line 9' in stacks[1], stacks[1]  # time.sleep
    assert 'train.py", line 10' in stacks[0], stacks[0]  # the second all_reduce
    from harness.judge.verdict import judge

    verdict = judge([record])
    assert verdict.outcome == "failed" and "hang" in verdict.causes


@pytest.mark.slow
def test_a_job_stopped_at_max_run_has_its_stacks_taken_first(tmp_path: Path) -> None:
    """A timeout is localised like a hang: each rank's stack is dumped before the stop."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(_STUCK)
    job = JobSpec(
        name="stuck",
        source_dir=tmp_path / "src",
        entry_point="train.py",
        instance_count=2,
        distribution="torchrun",
        max_run=20,
    )
    record = get_backend("local", hang_after_s=600).run(job, tmp_path / "records")
    assert record.status == "timeout" and record.manifest.rung_facts["hang_after_s"] == 600
    assert 'train.py", line 9' in (record.root / "ranks" / "rank-1.stacks.txt").read_text()


@pytest.mark.unit
def test_the_default_hang_bound_fits_inside_max_run() -> None:
    from harness.runtime.hang_watch import hang_after

    assert hang_after(300, False, 240) == 120 and hang_after(300, False, 3600) == 300
    assert hang_after(300, True, 240) == 300  # what the user asked for stands


@pytest.mark.docker
@pytest.mark.slow
def test_sigterm_to_a_ladder_mid_job_leaves_nothing_and_marks_the_record(
    engine: DockerClient, torch_image: str, tmp_path: Path
) -> None:
    job = _sleeper_job(tmp_path, 900)
    records = tmp_path / "records"
    harness = subprocess.Popen(
        [sys.executable, "-m", "harness", "ladder", str(job), "--rungs", "docker", "--records", str(records)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        preexec_fn=terminal_signals,
    )
    try:
        run_id = _wait_for_running_containers(engine, records, count=2)
        harness.send_signal(signal.SIGTERM)
        assert harness.wait(timeout=120) == 143
        assert harness.stderr is not None and "stopped by SIGTERM" in harness.stderr.read()
    finally:
        if harness.poll() is None:
            harness.kill()
    assert _labelled("containers", f"harness.run_id={run_id}") == []
    assert _labelled("networks", f"harness.run_id={run_id}") == []
    manifest = RunRecord.load(records / run_id).manifest
    assert manifest.status == "interrupted" and manifest.complete
    assert not Path(manifest.rung_facts["work_dir"]).exists()
