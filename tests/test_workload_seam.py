"""A workload other than training: a spec (and its job files' loader), its rungs and its checks from
another package, one module each and one registration each, nothing of the harness edited. The ladder, the record and
the verdict take it as they take a training job; the training checks never judge its records,
and a training rung is refused for it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fake_records import make_record

from harness.cli import main
from harness.errors import UsageError
from harness.judge.verdict import judge
from harness.ladder import climb

pytestmark = pytest.mark.unit

ECHO_SPEC = '''
"""An endpoint that answers one word: a job of the ``echo`` workload."""
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class EchoSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[str] = "echo"
    default_rungs: ClassVar[tuple[str, ...]] = ("echo-here", "echo-there")

    name: str
    answer: str = "pong"
    replicas: int = 2

    @property
    def hosts(self) -> list[str]:
        return [f"replica-{i}" for i in range(1, self.replicas + 1)]

    output_path: ClassVar[None] = None
    metric_definitions: ClassVar[tuple[()]] = ()

    def check_local_paths(self, origin: str) -> None:
        return None

    def record_section(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def topology(self) -> dict[str, Any]:
        return {"hosts": self.hosts, "processes_per_host": 1, "world_size": self.replicas}

    def with_changes(self, changes: Mapping[str, Any]) -> "EchoSpec":
        return EchoSpec.model_validate({**self.model_dump(), **changes})


def load(data, *, origin, base_dir):
    """A job file of the echo workload (``workload: echo``)."""
    return EchoSpec.model_validate(data)
'''

ECHO_RUNG = '''
"""Two rungs of the echo workload: each replica answers in its log; ``echo-there`` answers in capitals
when its job says so (the fault a check must find)."""
from harness.backends.base import Backend, Capabilities, Plan


class EchoHere(Backend):
    name = "echo-here"
    workload = "echo"
    capabilities = Capabilities(gpus=False, separate_hosts=False, containers=False, hang_detection=False)

    def unavailable_reason(self):
        return None

    def plan(self, job):
        return Plan(rung=self.name, job=job, hosts={})

    def _execute(self, plan, record, progress):
        for host in plan.job.hosts:
            answer = self.answer(plan.job)
            (record.host_dir(host) / "log.txt").write_text(f"2026-01-01T00:00:00.000Z answer={answer}\\n")
            record.host_result(host, exit_code=0)
        return "succeeded"

    def answer(self, job):
        return job.answer


class EchoThere(EchoHere):
    name = "echo-there"

    def answer(self, job):
        return job.answer.upper() if job.name.endswith("-loud") else job.answer
'''

ECHO_CHECKS = '''
"""The echo workload's check, and a training check that would find a divergence in any pair."""
from harness.judge import Finding, PairCheck


def _answers(record):
    return {host: record.host_log(host).read_text().split("answer=")[-1].strip() for host in record.hosts}


def _compare(baseline, candidate, context):
    before, after = _answers(baseline), _answers(candidate)
    if before == after:
        return []
    title = f"the answers differ: {before} -> {after}"
    return [Finding(kind="echo", severity="divergence", title=title, cause="echo-answer-differs")]


def _always(baseline, candidate, context):
    return [Finding(kind="training", severity="divergence", title="a training check ran", cause="training-ran")]


ECHO = PairCheck("echo-answers", _compare, workload="echo")
TRAINING_ONLY = PairCheck("always-diverges", _always)
'''

ENTRY_POINTS = """\
[harness.workloads]
echo = echo_harness.spec:load

[harness.rungs]
echo-here = echo_harness.rung:EchoHere
echo-there = echo_harness.rung:EchoThere

[harness.checks]
echo-answers = echo_harness.checks:ECHO
always-diverges = echo_harness.checks:TRAINING_ONLY
"""


@pytest.fixture
def echo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> type:
    """``pip install echo-harness`` as it leaves site-packages; its spec class."""
    site = tmp_path / "site"
    (site / "echo_harness").mkdir(parents=True)
    (site / "echo_harness" / "__init__.py").write_text("")
    for module, text in (("spec", ECHO_SPEC), ("rung", ECHO_RUNG), ("checks", ECHO_CHECKS)):
        (site / "echo_harness" / f"{module}.py").write_text(text)
    info = site / "echo_harness-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-harness\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(site))
    for module in ("echo_harness", "echo_harness.spec", "echo_harness.rung", "echo_harness.checks"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    from echo_harness.spec import EchoSpec  # type: ignore[import-not-found]

    return EchoSpec  # type: ignore[no-any-return]


def test_a_job_of_another_workload_climbs_its_own_rungs_and_is_judged_by_its_own_checks(
    echo: type, tmp_path: Path
) -> None:
    result = climb(echo(name="ping"), tmp_path / "records")
    assert [record.rung for record in result.records] == ["echo-here", "echo-there"]
    assert result.verdict.outcome == "parity", [f.title for f in result.verdict.findings]
    manifest = result.records[1].manifest
    assert (manifest.workload, manifest.job.name, manifest.topology.world_size) == ("echo", "ping", 2)
    assert manifest.topology.hosts == ["replica-1", "replica-2"] and manifest.topology.launcher is None


def test_the_workloads_check_finds_what_departs(echo: type, tmp_path: Path) -> None:
    verdict = climb(echo(name="ping-loud"), tmp_path / "records").verdict
    assert (verdict.outcome, verdict.first_rung) == ("diverged", "echo-there")
    assert verdict.causes == ["echo-answer-differs"]


def test_a_training_check_judges_training_records_only(echo: type, tmp_path: Path) -> None:
    training = [make_record(tmp_path / "training", rung, losses=[1.0, 0.5]) for rung in ("single", "local")]
    assert "training-ran" in judge(training).causes


def test_a_rung_of_another_workload_is_refused_before_anything_runs(echo: type, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="rung 'local' runs training jobs; 'ping' is of the echo workload"):
        climb(echo(name="ping"), tmp_path / "records", rungs=["echo-here", "local"])
    assert not (tmp_path / "records").exists()


def test_records_of_two_workloads_are_not_judged_against_each_other(echo: type, tmp_path: Path) -> None:
    (echo_record,) = climb(echo(name="ping"), tmp_path / "records", rungs=["echo-here"]).records
    training = make_record(tmp_path / "training", "local", losses=[1.0])
    with pytest.raises(UsageError, match=r"different workloads \(echo, training\)"):
        judge([training, echo_record])


def test_a_job_file_names_its_workload_and_the_command_line_climbs_that_workloads_ladder(
    echo: type, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "job.yaml").write_text("workload: echo\nname: ping-loud\nreplicas: 3\n")
    code = main(["ladder", str(tmp_path / "job.yaml"), "--records", str(tmp_path / "records")])
    out = capsys.readouterr().out
    assert code == 1 and "DIVERGED" in out and "echo-answer-differs" in out, out
    runs = sorted(p.name for p in (tmp_path / "records").iterdir())
    assert [run.rsplit("-", 2)[0] for run in runs] == ["ping-loud-echo-here", "ping-loud-echo-there"]
    assert main(["bisect", str(tmp_path / "job.yaml"), "--between", "echo-here,echo-there"]) == 2
    assert "is of the echo workload" in capsys.readouterr().err


def test_a_job_file_of_a_workload_not_known_here_is_refused_with_the_ones_that_are(
    echo: type, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "job.yaml").write_text("workload: ecko\nname: ping\n")
    assert main(["ladder", str(tmp_path / "job.yaml"), "--records", str(tmp_path / "records")]) == 2
    err = capsys.readouterr().err
    assert "workload: 'ecko' is not a workload known here; did you mean 'echo'?" in err, err
    assert "training, echo" in err and not (tmp_path / "records").exists()
