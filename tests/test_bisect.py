"""`harness bisect` names the one difference between two rungs (local or single, and docker) that makes a job depart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.ladder.bisect import Bisection, Step, to_text
from harness.testing import Canned, canned_rungs

JOBS = Path(__file__).resolve().parent / "data" / "probe_jobs"


def _bisect(job: Path, tmp_path: Path, *flags: str) -> dict[str, object]:
    report = tmp_path / "bisect.json"
    code = main(["bisect", str(job), "--records", str(tmp_path / "records"), "--json", str(report), *flags])
    result = json.loads(report.read_text())
    assert code == 0, result
    return result  # type: ignore[no-any-return]


@pytest.mark.docker
@pytest.mark.slow
def test_the_shm_fault_is_bisected_to_dev_shm(scenarios: Path, torch_image: str, tmp_path: Path) -> None:
    result = _bisect(scenarios / "fault_shm_exhaustion" / "job.yaml", tmp_path, "--shm-size", "64m")
    assert result["departure"] == "docker failed (shm-exhausted)"
    assert (result["dimension"], len(result["steps"])) == ("/dev/shm", 1)


@pytest.mark.docker
@pytest.mark.slow
def test_the_loopback_rendezvous_is_bisected_to_the_network_model_from_one_process(
    scenarios: Path, torch_image: str, tmp_path: Path
) -> None:
    """One process meets itself on 127.0.0.1; two containers do not, unless they share a loopback."""
    result = _bisect(scenarios / "fault_localhost_rendezvous" / "job.yaml", tmp_path, "--between", "single,docker")
    assert result["dimension"] == "network model" and len(result["steps"]) == 1  # type: ignore[arg-type]
    (step,) = result["steps"]  # type: ignore[misc]
    assert step["agrees"] and step["outcome"] == "diverged (rendezvous-address)"  # succeeded, still named


@pytest.mark.unit
def test_nothing_is_bisected_where_the_upper_rung_ends_as_the_lower_one(tmp_path: Path) -> None:
    """local fails the loopback rendezvous as docker does (each host its own network): nothing
    departs, and nothing is run but the two rungs (canned here; the scenario
    fault_localhost_rendezvous shows both failing for real)."""
    failed = Canned(status="failed", log=["RuntimeError: connect() to algo-1:7777 timed out"])
    report = tmp_path / "bisect.json"
    job = Path(__file__).resolve().parents[1] / "scenarios" / "fault_localhost_rendezvous" / "job.yaml"
    with canned_rungs(lambda job, rung, options: failed, ["local", "docker"]):
        code = main(["bisect", str(job), "--records", str(tmp_path / "records"), "--json", str(report)])
    result = json.loads(report.read_text())
    assert code == 1 and result["departure"].startswith("nothing to bisect: docker does not depart from local")
    assert result["steps"] == [] and len(list((tmp_path / "records").iterdir())) == 2


@pytest.mark.docker
@pytest.mark.slow
def test_a_variable_of_the_users_shell_is_named(
    torch_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEATURE_SCALE_FOR_BISECT", "3")
    result = _bisect(JOBS / "shell_variable" / "job.yaml", tmp_path)
    assert result["departure"].startswith("docker diverged (metric-divergence)")  # type: ignore[union-attr]
    assert (result["dimension"], result["culprit"]) == ("environment", "FEATURE_SCALE_FOR_BISECT")
    assert all(Path(step["record"]).is_dir() for step in result["steps"])  # type: ignore[union-attr, index]


@pytest.mark.unit
def test_a_step_that_removes_the_failure_says_what_still_differs() -> None:
    result = Bisection("single", "docker", "docker failed (rendezvous-address)", dimension="network model")
    result.steps = [
        Step("/dev/shm", "/dev/shm as on the host", "runs/a", False, "failed (rendezvous-address)"),
        Step("network model", "one network namespace", "runs/b", True, "diverged (rendezvous-address)"),
    ]
    lines = to_text(result).splitlines()
    assert lines[1] == "  1. [/dev/shm] docker with /dev/shm as on the host: departs: failed (rendezvous-address)"
    assert lines[3].endswith("one network namespace: ends as on single (verdict: diverged (rendezvous-address))")
    assert (
        lines[5] == "the docker run departs because of its network model (set as on single, the job ends as on single)"
    )
