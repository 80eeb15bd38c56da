"""Rung settings: every command-line flag on every rung either works or is refused with exit 2
and a message; scenario settings are checked against what each rung declares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.backends import get_backend, rung_options, rungs
from harness.cli import main
from harness.errors import JobSpecError, UsageError
from harness.ladder.scenario import load_scenario


@pytest.mark.unit
def test_every_rung_declares_its_settings_and_capabilities() -> None:
    for name in rungs():
        backend = get_backend(name)
        assert backend.name == name
        assert backend.options == backend.Options()
        assert isinstance(backend.capabilities.hang_detection, bool)


@pytest.mark.unit
def test_an_unknown_setting_names_the_rung_the_key_and_the_choices() -> None:
    with pytest.raises(
        UsageError, match=r"rung 'local' has no setting 'shm_size'\nHint: its settings: hang_after_s, probe"
    ):
        get_backend("local", shm_size="64m")


@pytest.mark.unit
def test_a_setting_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(UsageError, match=r"rung 'docker' setting 'gpus'"):
        rung_options("docker", {"gpus": "sometimes"})
    with pytest.raises(UsageError, match=r"rung 'local' setting 'hang_after_s'"):
        rung_options("local", {"hang_after_s": -1})


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--rung", "local", "--shm-size", "64m"], "--shm-size does not apply here: local has no setting 'shm_size'"),
        (["--rung", "local", "--image", "x:1"], "--image does not apply here: local has no setting 'image'"),
        (["--rung", "sagemaker", "--hang-after", "5", "--dry-run"], "sagemaker has no hang detection"),
        (["--rung", "sagemaker", "--shm-size", "1g", "--dry-run"], "sagemaker has no setting 'shm_size'"),
    ],
)
@pytest.mark.unit
def test_a_flag_the_rung_does_not_take_is_refused(
    argv: list[str], expected: str, scenarios: Path, records: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", str(scenarios / "ddp_csv" / "job.yaml"), "--records", str(records), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err
    assert "Traceback" not in err
    assert list(records.iterdir()) == []


@pytest.mark.unit
def test_a_ladder_flag_no_rung_takes_is_refused_before_anything_runs(
    scenarios: Path, records: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = str(scenarios / "ddp_csv" / "job.yaml")
    assert main(["ladder", job, "--rungs", "local,local-gpu", "--shm-size", "64m", "--records", str(records)]) == 2
    assert "--shm-size does not apply here" in capsys.readouterr().err
    assert list(records.iterdir()) == []


@pytest.mark.unit
def test_an_unknown_rung_in_a_ladder_is_refused(scenarios: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ladder", str(scenarios / "ddp_csv" / "job.yaml"), "--rungs", "local,dokcer"]) == 2
    assert "unknown rung 'dokcer'" in capsys.readouterr().err


@pytest.mark.unit
def test_scenario_settings_are_checked_when_the_scenario_loads(tmp_path: Path) -> None:
    (tmp_path / "scenario.yaml").write_text(
        "steps:\n  - rung: local\n    options: {shm_size: 64m}\nexpect: {outcome: parity}\n"
    )
    with pytest.raises(JobSpecError, match=r"scenario.yaml: rung 'local' has no setting 'shm_size'"):
        load_scenario(tmp_path)


@pytest.mark.slow
@pytest.mark.docker
def test_hang_after_on_a_local_and_docker_ladder_gives_a_verdict(
    scenarios: Path, records: Path, torch_image: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    report = tmp_path / "verdict.json"
    code = main(
        [
            "ladder",
            str(scenarios / "ddp_csv" / "job.yaml"),
            "--rungs",
            "local,docker",
            "--hang-after",
            "30",
            "--records",
            str(records),
            "--json",
            str(report),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PARITY" in out
    verdict = json.loads(report.read_text())
    assert verdict["rungs"] == ["local", "docker"]
    manifests = [json.loads(p.read_text()) for p in sorted(records.glob("*/manifest.json"))]
    assert sorted(m["rung_facts"]["hang_after_s"] for m in manifests) == [30.0, 30.0]
