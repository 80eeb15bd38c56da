"""The rank checks on real jobs that are not scenarios (tests/data/probe_jobs/): parsed
arguments under torchrun, children that die of what they printed while the parent succeeds, and
point-to-point traffic that is no collective mismatch on any rung."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.backends import get_backend
from harness.judge.verdict import judge
from harness.spec.job import load_job

pytestmark = pytest.mark.slow

JOBS = Path(__file__).resolve().parent / "data" / "probe_jobs"


def test_a_boolean_parsed_with_type_bool_under_torchrun(tmp_path: Path) -> None:
    """torchrun parses its own command line first, in another process; the check reads what the
    script's parser made of each hyperparameter on every rank."""
    record = get_backend("local").run(load_job(JOBS / "torchrun_bool_flag" / "job.yaml"), tmp_path)
    assert record.status == "succeeded", record.host_log("algo-1").read_text()[-2000:]
    top = judge([record]).findings[0]
    assert top.cause == "hyperparameter-type"
    assert top.evidence == ["normalize: the job gave False (bool), the script parsed True (bool) on ranks 0, 1"]


def test_children_that_died_are_named_by_what_they_printed(tmp_path: Path) -> None:
    record = get_backend("local").run(load_job(JOBS / "children_without_nccl" / "job.yaml"), tmp_path)
    assert record.status == "succeeded"
    verdict = judge([record])
    top = verdict.findings[0]
    assert verdict.outcome == "failed" and top.cause == "hidden-child-failure"
    assert top.title == "the job reported success but 2 of its processes failed: NCCL backend without CUDA"
    assert top.evidence[0].startswith("printed: hosts/algo-1/log.txt:")
    assert "Distributed package doesn't have NCCL built in" in top.evidence[0]
    assert any("train.py" in line and "in worker" in line for line in top.evidence[1:3])
    exits = [line for line in top.evidence if ": exit 1, RuntimeError: Distributed package" in line]
    assert len(exits) == 2  # each child's own exception, recorded by the probe


@pytest.mark.docker
def test_point_to_point_is_parity_on_local_and_docker(engine: object, torch_image: str, tmp_path: Path) -> None:
    job = load_job(JOBS / "p2p_objects" / "job.yaml")
    local = get_backend("local").run(job, tmp_path)
    docker = get_backend("docker", image=torch_image).run(job, tmp_path)
    verdict = judge([local, docker])
    assert verdict.outcome == "parity", [(f.cause, f.title, f.evidence) for f in verdict.findings]


def test_a_rank_on_its_own_loopback_is_named_on_local(tmp_path: Path) -> None:
    """Whatever the local rung's network (one shared loopback, where the job trains, or a
    network per host, where host 2 waits), the first finding names the rank that rendezvous on
    its own loopback while rank 0 serves the store on algo-1."""
    record = get_backend("local", hang_after_s=15).run(load_job(JOBS / "loopback_master" / "job.yaml"), tmp_path)
    assert record.status in ("succeeded", "hung"), record.host_log("algo-2").read_text()[-2000:]
    verdict = judge([record])
    top = verdict.findings[0]
    assert verdict.outcome in ("diverged", "failed") and top.cause == "rendezvous-address", top
    assert top.evidence[0] == "rank 0 serves the store on algo-1"
    assert top.evidence[1].startswith("rank 1 on algo-2 connects to localhost:29411 (env://), which is algo-2")
    assert "train.py:15" in top.evidence[1]


@pytest.mark.docker
def test_a_rendezvous_that_never_completes_is_stopped_and_localised(
    engine: object, torch_image: str, tmp_path: Path
) -> None:
    """Torch would wait 30 minutes and max_run is 300 s: the watchdog stops the run once nobody
    has arrived for the hang bound, and the findings say who waited for what."""
    job = load_job(JOBS / "loopback_master" / "job.yaml")
    record = get_backend("docker", image=torch_image, hang_after_s=20).run(job, tmp_path)
    assert record.status == "hung", record.host_log("algo-2").read_text()[-2000:]
    findings = judge([record]).findings
    assert [f.cause for f in findings[:2]] == ["rendezvous-address", "rendezvous-timeout"], findings
    waited = findings[1].evidence
    assert waited[0] == "world size 2: joined none, waiting [0, 1], never arrived none"
    assert any(line.startswith("rank 1 on algo-2 waited since") and "localhost:29411" in line for line in waited)
    assert all(line.endswith("the contract gave algo-1:7777") for line in waited[1:])
    assert "hang" not in [f.cause for f in findings], "the rendezvous findings localise it: no empty echo"
