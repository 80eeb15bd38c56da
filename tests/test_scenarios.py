"""Every scenario through its ladder: correct jobs come out parity, planted faults have their
cause ranked first. Steps whose rung cannot run here are skipped by the scenario runner; a
scenario none of whose steps can run is skipped with the reasons."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.ladder.scenario import all_scenarios, load_scenario, run_scenario
from harness.report import to_text
from harness.spec.job import load_job

SCENARIOS = all_scenarios(Path(__file__).resolve().parent.parent / "scenarios")


@pytest.mark.slow
@pytest.mark.parametrize("directory", SCENARIOS, ids=[p.name for p in SCENARIOS])
def test_scenario_diagnosis(directory: Path, records: Path, request: pytest.FixtureRequest) -> None:
    spec = load_scenario(directory)
    if spec.s3_data or load_job(directory / spec.job).uses_s3:
        request.getfixturevalue("localstack")  # the scenario's S3 is the harness's LocalStack
    result = run_scenario(directory, records)
    if result.verdict is None:
        pytest.skip("no step can run here: " + "; ".join(f"{k}: {v}" for k, v in result.skipped.items()))
    expect = result.spec.expect
    report = to_text(result.verdict)
    ran = {record.rung for record in result.records}
    if expect.first_rung and expect.first_rung not in ran:
        # Skipped only where that rung cannot run here; a rung the ladder never reached (it
        # departed below it) or that is no step of the scenario is a failure, never a pass or a skip.
        labels = [step.to_step().label for step in result.spec.steps if step.rung == expect.first_rung]
        unavailable = {label: result.skipped[label] for label in labels if label in result.skipped}
        if labels and len(unavailable) == len(labels):
            pytest.skip(f"the rung that shows this fault cannot run here: {unavailable}")
        pytest.fail(
            f"the rung that shows this fault, {expect.first_rung}, did not run: "
            f"not run {result.verdict.not_run}, skipped {result.skipped}\n{report}"
        )
    assert result.verdict.outcome == expect.outcome, report
    if expect.cause:
        assert result.verdict.causes[:1] == [expect.cause], report
    if expect.first_rung:
        assert result.verdict.first_rung == expect.first_rung, report


@pytest.mark.unit
def test_there_are_enough_scenarios() -> None:
    faults = [p for p in SCENARIOS if p.name.startswith("fault_")]
    assert len(SCENARIOS) - len(faults) >= 3 and len(faults) >= 8
