"""The ladder, the CLI and the reports on canned rungs (``harness.testing``): what a climb decides
from the records it is given, in milliseconds, with no process started."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.backends import rungs
from harness.backends.base import RungOptions
from harness.cli import main
from harness.ladder.climbing import climb
from harness.report import to_html, to_markdown
from harness.spec.job import JobSpec
from harness.testing import Canned, canned_rungs, steps_event

pytestmark = pytest.mark.unit

JOB = JobSpec(name="canned", image="img", instance_count=2, processes_per_host=2, distribution="torchrun")
GLOBAL_BATCH = 16
LOSSES = [2.0, 1.5, 1.2, 1.0]
NORMS = [1.0, 0.9, 0.8, 0.7]


def _learning(losses_by_rung: dict[str, list[float]], failing: tuple[str, ...] = ()):
    """Every rank of a rung logs the global batch's loss at each step (a correct DDP job does:
    the ranks' mean is the loss of the whole batch); ``failing`` rungs end with exit code 1."""

    def respond(job: JobSpec, rung: str, options: RungOptions) -> Canned:
        world = job.instance_count * (job.processes_per_host or 1)
        losses = losses_by_rung.get(rung, LOSSES)
        ledger = steps_event(losses, samples=GLOBAL_BATCH // world, grad_norms=NORMS)
        return Canned(
            status="failed" if rung in failing else "succeeded",
            log=[f"step={i} loss={v}" for i, v in enumerate(losses)],
            rank_events={rank: [ledger] for rank in range(world)},
        )

    return respond


def test_the_same_global_steps_on_every_rung_are_parity(tmp_path: Path) -> None:
    with canned_rungs(_learning({}), ["single", "local", "docker"]):
        result = climb(JOB, tmp_path, rungs=["single", "local", "docker"])
    assert result.verdict.outcome == "parity", [f.title for f in result.verdict.findings]
    assert [r.rung for r in result.records] == ["single", "local", "docker"]
    assert [r.status for r in result.records] == ["succeeded"] * 3
    # `single` takes the job as the real rung does: one host, one process
    assert result.records[0].manifest.hosts.keys() == {"algo-1"}
    assert result.records[1].manifest.hosts.keys() == {"algo-1", "algo-2"}


def test_a_rung_that_learns_otherwise_is_named_with_its_first_step_and_the_rungs_above_are_not_run(
    tmp_path: Path,
) -> None:
    departed = [2.0, 1.5, 1.9, 1.7]
    with canned_rungs(_learning({"local": departed}), ["single", "local", "docker"]):
        result = climb(JOB, tmp_path, rungs=["single", "local", "docker"])
    verdict = result.verdict
    assert (verdict.outcome, verdict.first_rung, verdict.baseline_rung) == ("diverged", "local", "single")
    first = verdict.findings[0]
    assert (first.cause, first.step) == ("learning-differs", 2), [f.title for f in verdict.findings]
    assert list(verdict.not_run) == ["docker"]
    assert [r.rung for r in result.records] == ["single", "local"]


def test_keep_going_climbs_past_a_failed_rung(tmp_path: Path) -> None:
    with canned_rungs(_learning({}, failing=("local",)), ["single", "local", "docker"]):
        stopped = climb(JOB, tmp_path / "stopped", rungs=["single", "local", "docker"])
        kept_going = climb(JOB, tmp_path / "kept", rungs=["single", "local", "docker"], keep_going=True)
    assert (stopped.verdict.outcome, stopped.verdict.first_rung) == ("failed", "local")
    assert list(stopped.verdict.not_run) == ["docker"]
    assert [r.rung for r in kept_going.records] == ["single", "local", "docker"]
    assert kept_going.verdict.first_rung == "local" and not kept_going.verdict.not_run


def test_canned_rungs_stand_in_only_inside_their_block() -> None:
    before = rungs()["local"]
    with canned_rungs(_learning({}), ["local"]):
        assert rungs()["local"] == "harness.testing:Canned_local"
    assert rungs()["local"] == before


def test_the_cli_ladder_exits_with_the_verdict_and_writes_every_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_yaml = tmp_path / "job.yaml"
    job_yaml.write_text("name: canned\nimage: img\ninstance_count: 2\nprocesses_per_host: 2\ndistribution: torchrun\n")
    reports = {suffix: tmp_path / f"verdict.{suffix}" for suffix in ("json", "html", "md")}
    argv = ["ladder", str(job_yaml), "--rungs", "single,local", "--records", str(tmp_path / "records")]
    argv += ["--json", str(reports["json"]), "--html", str(reports["html"]), "--markdown", str(reports["md"])]
    with canned_rungs(_learning({}), ["single", "local"]):
        assert main(argv) == 0
    assert "PARITY" in capsys.readouterr().out
    assert json.loads(reports["json"].read_text())["outcome"] == "parity"
    with canned_rungs(_learning({"local": [2.0, 3.0, 3.5, 4.0]}), ["single", "local"]):
        assert main([*argv[:-6], "--records", str(tmp_path / "again"), "--json", str(reports["json"])]) == 1
    verdict = json.loads(reports["json"].read_text())
    assert (verdict["outcome"], verdict["first_rung"], verdict["first_step"]) == ("diverged", "local", 1)


def test_reports_of_a_departure_name_the_rung_the_step_and_the_cause(tmp_path: Path) -> None:
    with canned_rungs(_learning({"local": [2.0, 1.5, 1.9, 1.7]}), ["single", "local"]):
        verdict = climb(JOB, tmp_path, rungs=["single", "local"]).verdict
    for text in (to_markdown(verdict, at=tmp_path / "v.md"), to_html(verdict, at=tmp_path / "v.html")):
        assert "diverged" in text.lower() and "learning-differs" in text and "local" in text
