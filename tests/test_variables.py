"""Environment variables the job read, tied to what went wrong (harness/judge/variables.py): a
variable that differs between two rungs is named with both values when they diverge, an unset
SageMaker name is named with the ones the contract sets when the job fails, and a variable that
differs by design never turns parity into a divergence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fake_records import make_record

from harness.backends import get_backend
from harness.judge import variables
from harness.judge.protocol import CheckContext
from harness.judge.verdict import judge, settle
from harness.record.run_record import RunRecord
from harness.spec.job import load_job

JOBS = Path(__file__).resolve().parent / "data" / "probe_jobs"


def _read(value: str | None, at: str = "/opt/ml/code/train.py:5", by: str = "job") -> dict[str, Any]:
    return {"value": value, "set": value is not None, "at": at, "by": by}


def _process(reads: dict[str, dict[str, Any]], env: dict[str, str] | None = None) -> dict[str, Any]:
    return {"rank": "0", "env": env or {}, "env_reads": reads, "exit_code": 0}


def _decisive(verdict: Any) -> list[Any]:
    return [f for f in verdict.findings if f.severity != "note"]


@pytest.mark.unit
def test_a_variable_read_with_another_value_is_named_when_the_rungs_diverge(tmp_path: Path) -> None:
    base = make_record(
        tmp_path, "local", losses=[1.0, 0.5], processes=[_process({"SCALE": _read("3")}, {"SCALE": "3"})]
    )
    cand = make_record(tmp_path, "docker", losses=[9.0, 4.5], processes=[_process({"SCALE": _read(None)})])
    verdict = judge([base, cand])
    assert verdict.outcome == "diverged"
    found = next(f for f in _decisive(verdict) if f.cause == "env-var-differs")
    assert found.title == "SCALE, which the job reads, is '3' on local and <unset> on docker"
    assert found.evidence == ["SCALE: '3' on local -> <unset> on docker; read by the job at /opt/ml/code/train.py:5"]
    assert verdict.causes[0] == "metric-divergence"  # the symptom stays first; the variable right with it


@pytest.mark.unit
def test_a_variable_that_differs_alone_is_a_note_and_parity_stands(tmp_path: Path) -> None:
    reads = {"HOSTNAME": _read("laptop"), "TORCH_HOME": _read("/a", at="/x/site-packages/torch/hub.py:1", by="library")}
    other = {"HOSTNAME": _read("algo-1"), "TORCH_HOME": _read("/b", at="/x/site-packages/torch/hub.py:1", by="library")}
    base = make_record(tmp_path, "local", losses=[1.0, 0.5], processes=[_process(reads)])
    cand = make_record(tmp_path, "docker", losses=[1.0, 0.5], processes=[_process(other)])
    verdict = judge([base, cand])
    assert verdict.outcome == "parity", _decisive(verdict)
    assert not verdict.findings
    (note,) = settle(variables.compare(base, cand, CheckContext()))
    assert (note.cause, note.severity) == ("env-var-differs", "note")
    assert (
        note.title
        == "HOSTNAME, which the job reads, is 'laptop' on local and 'algo-1' on docker; 1 more variable read differs"
    )
    assert note.evidence[0].startswith("HOSTNAME: 'laptop' on local -> 'algo-1' on docker; read by the job")
    assert note.evidence[1] == "TORCH_HOME: '/a' on local -> '/b' on docker; read at torch/hub.py:1"


@pytest.mark.unit
def test_a_name_one_run_did_not_read_is_taken_from_its_processes_environment(tmp_path: Path) -> None:
    """The job read DATA_ROOT on local only (a branch docker never took): docker's processes
    started without it. A record whose probe recorded no reads at all stands for nothing."""
    base = make_record(
        tmp_path, "local", losses=[1.0], processes=[_process({"DATA_ROOT": _read("/d"), "OTHER": _read("x")})]
    )
    cand = make_record(tmp_path, "docker", losses=[2.0], processes=[_process({"OTHER": _read("x")}, {"PATH": "/b"})])
    (found,) = variables.compare(base, cand, CheckContext())
    assert found.evidence == [
        "DATA_ROOT: '/d' on local -> <unset> on docker; read by the job at /opt/ml/code/train.py:5"
    ]
    older = make_record(tmp_path, "docker", losses=[2.0], processes=[{"rank": "0", "env": {}, "exit_code": 0}])
    assert variables.compare(base, older, CheckContext()) == []


@pytest.mark.unit
def test_contract_variables_are_left_to_the_contract_check(tmp_path: Path) -> None:
    base = make_record(tmp_path, "local", losses=[1.0], processes=[_process({"SM_CURRENT_HOST": _read("algo-1")})])
    cand = make_record(tmp_path, "docker", losses=[2.0], processes=[_process({"SM_CURRENT_HOST": _read("algo-2")})])
    assert not [f for f in judge([base, cand]).findings if f.cause == "env-var-differs"]


@pytest.mark.unit
def test_the_topology_torchrun_gives_each_worker_differs_by_design(tmp_path: Path) -> None:
    """faults b6c_join_metric_allreduce_uneven, b6c_accum_tail_window_unsynced: LOCAL_WORLD_SIZE,
    read by the job, is 1 on single and 2 on local; it was named as a lead."""
    topology = {"LOCAL_WORLD_SIZE": "1", "GROUP_RANK": "0", "ROLE_WORLD_SIZE": "1"}
    base = make_record(
        tmp_path, "single", losses=[1.0], processes=[_process({k: _read(v) for k, v in topology.items()})]
    )
    spread = {"LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1", "ROLE_WORLD_SIZE": "4"}
    cand = make_record(tmp_path, "local", losses=[2.0], processes=[_process({k: _read(v) for k, v in spread.items()})])
    assert not [f for f in judge([base, cand]).findings if f.cause == "env-var-differs"]


def _with_contract(record: RunRecord, env: dict[str, str]) -> RunRecord:
    path = record.root / "hosts" / "algo-1" / "received" / "env.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(env))
    return RunRecord.load(record.root)


@pytest.mark.unit
def test_an_unset_sagemaker_name_is_named_with_the_ones_the_contract_sets(tmp_path: Path) -> None:
    process = _process({"SM_CHANNEL_TRAINING": _read(None), "SM_HOSTS": _read('["algo-1"]')})
    process.update(exit_code=1, exception="KeyError: 'SM_CHANNEL_TRAINING'")
    record = make_record(tmp_path, "local", status="failed", processes=[process])
    record = _with_contract(record, {"SM_CHANNEL_TRAIN": "/opt/ml/input/data/train", "SM_HOSTS": '["algo-1"]'})
    verdict = judge([record])
    assert verdict.outcome == "failed"
    top = verdict.findings[0]
    assert top.cause == "sm-variable-unset", verdict.findings
    assert top.title == "the job read SM_CHANNEL_TRAINING, which is unset on local; set: SM_CHANNEL_TRAIN"
    assert top.evidence == [
        "SM_CHANNEL_TRAINING: read unset at /opt/ml/code/train.py:5; named in the error; the contract sets "
        "SM_CHANNEL_TRAIN"
    ]


@pytest.mark.unit
def test_a_failed_run_names_what_its_own_code_read_unset_never_a_librarys_advice(tmp_path: Path) -> None:
    advice = _read(None, at="/x/site-packages/torch/distributed/c10d_logger.py:3", by="library")
    process = _process({"TORCH_DISTRIBUTED_DEBUG": advice})
    process.update(exit_code=1, exception="RuntimeError: timed out; set TORCH_DISTRIBUTED_DEBUG=DETAIL")
    record = make_record(tmp_path, "local", status="failed", processes=[process])
    assert not variables.check_run(record, CheckContext())
    process["env_reads"]["DATA_DIR"] = _read(None)
    record = make_record(tmp_path, "local", status="failed", processes=[process])
    (found,) = variables.check_run(record, CheckContext())
    assert (found.cause, found.severity, found.confidence) == ("env-var-unset", "failure", 0.2)
    assert found.evidence == [
        "DATA_DIR: read unset at /opt/ml/code/train.py:5",
        "TORCH_DISTRIBUTED_DEBUG: read unset at torch/distributed/c10d_logger.py:3; named in the error",
    ]


@pytest.mark.unit
def test_a_succeeded_run_with_unset_reads_has_no_finding(tmp_path: Path) -> None:
    record = make_record(tmp_path, "local", processes=[_process({"SM_CHANNEL_TEST": _read(None)})])
    assert not [f for f in judge([record]).findings if f.cause in ("sm-variable-unset", "env-var-unset")]


# ---- the probe -------------------------------------------------------------------------------

_READER = """\
import os
scale = os.environ.get("FEATURE_SCALE", "1")
missing = os.getenv("NOT_THERE")
present = "ALSO_NOT" in os.environ
copies = dict(os.environ), os.environ.copy(), list(os.environ.items())
os.environ["MINE"] = "a"
os.environ["MINE"] = "b"
os.environ["MY_SECRET_TOKEN"] = "token-value-never-recorded"
del os.environ["MINE"]
try:
    os.environ["SM_CHANNEL_TRAINING"]
except KeyError:
    pass
if os.fork() == 0:
    os.environ.get("CHILD_ONLY")
    os._exit(0)
os.wait()
"""


@pytest.mark.slow
def test_the_probe_records_reads_and_writes_of_the_environment(tmp_path: Path) -> None:
    """What the job's code reads (set or not) and sets, where; never what the probe reads, nor
    each name of an environment listed whole; a forked child records its own (os._exit)."""
    import os
    import subprocess
    import sys

    (tmp_path / "job.py").write_text(_READER)
    probe = Path(variables.__file__).resolve().parent.parent / "probe"
    env = {**os.environ, "PYTHONPATH": str(probe), "HARNESS_PROBE_DIR": str(tmp_path / "rec")}
    env.update(FEATURE_SCALE="3", LISTED_ONLY="x")
    subprocess.run([sys.executable, str(tmp_path / "job.py")], env=env, check=True, timeout=60)
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "rec" / "processes").glob("*.json"))]
    assert len(records) == 2, records
    child = next(r for r in records if "CHILD_ONLY" in r.get("env_reads", {}))
    parent = next(r for r in records if r is not child)
    reads, job = parent["env_reads"], str(tmp_path / "job.py")
    assert reads["FEATURE_SCALE"] == {"value": "3", "set": True, "at": f"{job}:2", "by": "job"}
    assert reads["NOT_THERE"] == {"value": None, "set": False, "at": f"{job}:3", "by": "job"}
    assert reads["ALSO_NOT"]["set"] is False and reads["SM_CHANNEL_TRAINING"]["at"] == f"{job}:11"
    assert not {"LISTED_ONLY", "HARNESS_PROBE_DIR", "HARNESS_HOST", "RANK"} & set(reads)
    writes = parent["env_writes"]
    assert writes["MINE"] == {"value": None, "deleted": True, "at": f"{job}:6", "times": 3}
    assert writes["MY_SECRET_TOKEN"]["value"] == "<redacted>"
    assert "token-value-never-recorded" not in json.dumps(records)
    assert list(child["env_reads"]) == ["CHILD_ONLY"]
    assert not any(r.get("probe_errors") for r in records)


# ---- real runs ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.docker
def test_a_variable_of_the_users_shell_is_named_with_both_values(
    torch_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inherited from the harness's environment on local, absent in the container: the
    decisive findings name the variable, both values and the job's line that read it."""
    monkeypatch.setenv("FEATURE_SCALE_FOR_BISECT", "3")
    job = load_job(JOBS / "shell_variable" / "job.yaml")
    local = get_backend("local").run(job, tmp_path)
    docker = get_backend("docker", image=torch_image).run(job, tmp_path)
    verdict = judge([local, docker])
    assert verdict.outcome == "diverged", verdict.findings
    found = [f for f in _decisive(verdict) if f.cause == "env-var-differs"]
    assert found, [(f.cause, f.title) for f in verdict.findings]
    assert found[0].title.startswith(
        "FEATURE_SCALE_FOR_BISECT, which the job reads, is '3' on local and <unset> on docker"
    )
    assert (
        found[0].evidence[0].startswith("FEATURE_SCALE_FOR_BISECT: '3' on local -> <unset> on docker; read by the job")
    )
    assert found[0].evidence[0].endswith("train.py:5")
    reads = [p["env_reads"] for p in local.processes() if "FEATURE_SCALE_FOR_BISECT" in p.get("env_reads", {})]
    assert reads and reads[0]["FEATURE_SCALE_FOR_BISECT"]["by"] == "job"
    assert not any(p.get("probe_errors") for r in (local, docker) for p in r.processes())


@pytest.mark.slow
def test_a_job_that_reads_a_channel_it_does_not_have_is_named_with_its_channel(tmp_path: Path) -> None:
    record = get_backend("local").run(load_job(JOBS / "unset_channel" / "job.yaml"), tmp_path)
    assert record.status == "failed"
    verdict = judge([record])
    assert verdict.outcome == "failed"
    named = [f for f in _decisive(verdict)[:2] if "SM_CHANNEL_TRAINING" in f.title]
    assert named, [(f.cause, f.title) for f in verdict.findings]
    assert named[0].cause == "sm-variable-unset"
    assert named[0].title == "the job read SM_CHANNEL_TRAINING, which is unset on local; set: SM_CHANNEL_TRAIN"
    assert "named in the error" in named[0].evidence[0] and "train.py:4" in named[0].evidence[0]


@pytest.mark.slow
@pytest.mark.docker
def test_variables_that_differ_by_design_leave_a_correct_job_at_parity(torch_image: str, tmp_path: Path) -> None:
    """HOSTNAME, HOME and SM_CURRENT_HOST are not the same on local and in a container; the job
    reads them and computes the same: parity, the variables at most a note."""
    job = load_job(JOBS / "host_variables" / "job.yaml")
    local = get_backend("local").run(job, tmp_path)
    docker = get_backend("docker", image=torch_image).run(job, tmp_path)
    verdict = judge([local, docker])
    assert verdict.outcome == "parity", [(f.cause, f.severity, f.title, f.evidence) for f in verdict.findings]
    read = {name for p in docker.processes() for name, e in p.get("env_reads", {}).items() if e["by"] == "job"}
    assert {"SM_CURRENT_HOST", "HOSTNAME", "HOME", "TRAIN_VERBOSE", "SM_MODEL_DIR"} <= read
