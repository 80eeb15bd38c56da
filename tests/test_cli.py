"""What the command line says: `show` as a readable summary, `run` saying why a job failed and
where to look, progress lines when stderr is not a terminal (CI), the start of every rung."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fake_records import make_record

from harness.cli import main
from harness.cli.console import RungProgress
from harness.record.run_record import RunRecord
from harness.spec.job import JobSpec


def _edit_manifest(record: RunRecord, **changes: object) -> RunRecord:
    path = record.root / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return RunRecord.load(record.root)


@pytest.mark.unit
def test_show_gives_each_metric_once_and_facts_as_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = make_record(tmp_path, "local", losses=[1.0, 0.5, 0.25])
    (record.root / "metrics.json").write_text(
        json.dumps({"loss": {"algo-1": [1.0, 0.5, 0.25], "rank-0": [1.0, 0.5, 0.25]}, "acc": {"rank-1": [0.5, 0.9]}})
    )
    _edit_manifest(record, rung_facts={"machine": {"num_cpus": 2, "gpus": {"count": 0}}, "hosts": ["algo-1"]})
    assert main(["show", str(record.root)]) == 0
    out = capsys.readouterr().out.splitlines()
    loss = [line for line in out if "loss:" in line]
    assert loss == ["  loss: 3 points, first 1, last 0.25 (algo-1, rank-0)"]  # once, both sources named
    assert "  acc: 2 points, first 0.5, last 0.9 (rank-1)" in out
    facts = out[out.index("rung facts") :]
    assert facts[1:5] == ["  machine:", "    num_cpus: 2", "    gpus:", "      count: 0"]
    assert "  hosts: algo-1" in facts
    assert not any("{" in line for line in facts)  # no dict printed as a Python literal


@pytest.mark.unit
def test_show_gives_a_failure_whole_wrapped_and_the_log_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = make_record(tmp_path, "local", status="failed", losses=[1.0])
    reason = (
        "Traceback (most recent call last):\n  File train.py, line 3\nValueError: the learning rate schedule "
        "needs warmup_steps greater than zero but the configuration given to this job says zero, twice over"
    )
    hosts = {"algo-1": {"exit_code": 1, "failure_reason": reason, "failure_written_by": "job"}}
    _edit_manifest(record, hosts=hosts)
    assert main(["show", str(record.root)]) == 0
    out = capsys.readouterr().out
    assert "  algo-1: exit 1" in out and "    failure (written by the job):" in out
    shown = " ".join(line.strip() for line in out.splitlines() if line.startswith("      "))
    assert "ValueError: the learning rate schedule needs warmup_steps greater than zero" in shown
    assert shown.endswith("twice over")  # the whole line, not cut at 120 characters
    assert all(len(line) <= 110 for line in out.splitlines() if line.startswith("      "))
    assert "    log: hosts/algo-1/log.txt" in out
    assert f"record: {record.root}" in out
    assert "exit codes: algo-1 1" in out


@pytest.mark.unit
def test_show_names_the_signal_an_exit_code_stands_for(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = make_record(tmp_path, "local", status="failed")
    _edit_manifest(record, hosts={"algo-1": {"exit_code": -9}})
    assert main(["show", str(record.root)]) == 0
    assert "algo-1: exit -9 (SIGKILL)" in capsys.readouterr().out


@pytest.mark.unit
def test_progress_lines_when_stderr_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARNESS_PROGRESS_EVERY", "0.05")
    job = JobSpec(name="demo", image="img", instance_count=2)
    progress = RungProgress("docker", job, verbose=False)
    progress("algo-1", "epoch=1 step=3 loss=0.5")
    time.sleep(0.3)
    progress.done("succeeded")
    progress.done("succeeded")  # said once
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "[docker] starting: 2 hosts x 1 process"
    running = [line for line in err if "running;" in line]
    assert running and running[0].endswith("running; algo-1: epoch=1 step=3 loss=0.5")
    assert any("no new output; last algo-1: epoch=1" in line for line in running[1:])
    assert err[-1].startswith("[docker] succeeded after ") and len([e for e in err if "succeeded" in e]) == 1
    time.sleep(0.15)
    assert capsys.readouterr().err == ""  # nothing after the end


def _job(tmp_path: Path, script: str) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(script)
    job = tmp_path / "job.yaml"
    job.write_text("name: demo\nsource_dir: src\nentry_point: train.py\n")
    return job


@pytest.mark.slow
def test_run_says_why_a_job_failed_and_where_to_look(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = _job(tmp_path, "print('loading')\nraise ValueError('bad shape in layer 3: expected 64 columns, got 63')\n")
    assert main(["run", str(job), "--records", str(tmp_path / "records")]) == 1
    captured = capsys.readouterr()
    record = next((tmp_path / "records").iterdir())
    out = captured.out.splitlines()
    assert out[0] == f"local: failed ({record})"
    assert any(line.startswith("  cause: ") for line in out)
    assert "ValueError: bad shape in layer 3: expected 64 columns, got 63" in captured.out
    assert f"  logs: {record / 'hosts' / 'algo-1' / 'log.txt'}" in out or any(
        str(record / "hosts" / "algo-1" / "log.txt") in line for line in out
    )
    assert "  exit codes: algo-1 1" in out
    assert out[-1] == f"  more: harness show {record}"
    assert "[local] starting: 1 host x 1 process" in captured.err


@pytest.mark.slow
def test_a_ladder_says_which_rung_starts_and_how_it_ended(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = _job(tmp_path, "print('ok')\n")
    main(["ladder", str(job), "--rungs", "local", "--records", str(tmp_path / "records")])
    err = capsys.readouterr().err
    assert "[local] starting: 1 host x 1 process" in err
    assert "[local] succeeded after " in err


@pytest.mark.slow  # asks torch in a child for CUDA devices, probes namespaces and the Docker engine
def test_doctor_says_how_like_sagemaker_each_ready_rung_is(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The network model and the launcher of each ready rung, as its plan would record them; an
    unavailable rung is not planned."""
    from harness.backends.sagemaker import ROLE_ENV

    monkeypatch.delenv(ROLE_ENV, raising=False)  # the sagemaker rung is unavailable on any machine
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out.splitlines()
    local = out.index(next(line for line in out if line.startswith("local ")))
    assert " ready " in out[local], out[local]  # the local rung needs nothing a machine may lack
    assert out[local + 1].strip().startswith("network: ")
    assert out[local + 2].strip() == "toolkit: emulated (harness/spec/host_contract.py)"
    sagemaker = out.index(next(line for line in out if line.startswith("sagemaker ")))
    assert " unavailable: " in out[sagemaker], out[sagemaker]
    unavailable = [i for i, line in enumerate(out) if not line.startswith(" ") and " unavailable: " in line]
    assert sagemaker in unavailable
    for i in unavailable:
        assert i + 1 == len(out) or not out[i + 1].startswith(" "), f"an unavailable rung is not planned: {out[i]}"


@pytest.mark.unit
def test_gc_calls_each_rungs_leftover_collector_once_container_rungs_first(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from harness.backends import registered, rungs
    from harness.backends.base import Capabilities
    from harness.testing import CannedRung

    calls: list[str] = []

    def collector(name: str, lines: list[str]) -> Any:
        def collect() -> list[str]:
            calls.append(name)
            return lines

        return collect

    work_dirs, containers = collector("work dirs", ["run a: work dir removed"]), collector("containers", [])

    def rung(name: str, with_containers: bool, collectors: tuple[Any, ...]) -> type[CannedRung]:
        attributes = {
            "name": name,
            "capabilities": Capabilities(
                gpus=False, separate_hosts=False, containers=with_containers, hang_detection=False
            ),
            "leftover_collectors": classmethod(lambda cls: collectors),
        }
        return type(f"Rung_{name.replace('-', '_')}", (CannedRung,), attributes)

    backends = {name: rung(name, False, ()) for name in rungs()}
    backends.update(
        local=rung("local", False, (work_dirs,)),
        single=rung("single", False, (work_dirs,)),
        docker=rung("docker", True, (containers,)),
        **{"sagemaker-local": rung("sagemaker-local", True, (containers, work_dirs))},
    )
    with registered(backends):
        assert main(["gc"]) == 0
    assert calls == ["containers", "work dirs"]
    assert capsys.readouterr().out.strip() == "run a: work dir removed"
