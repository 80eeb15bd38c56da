"""The ladder as users climb it: from the single-process run a data scientist made, stopping where
it departs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.backends.local import single_process
from harness.cli import main
from harness.errors import JobSpecError
from harness.record.run_record import RunRecord
from harness.spec.job import JobSpec, load_job


@pytest.mark.slow
def test_a_ddp_wrapper_checkpoint_departs_at_the_first_distributed_rung(
    scenarios: Path, records: Path, tmp_path: Path
) -> None:
    """No steps of its own: the default ladder's baseline rung is the single-process run."""
    report = tmp_path / "verdict.json"
    code = main(
        [
            "ladder",
            str(scenarios / "fault_wrapped_checkpoint" / "job.yaml"),
            "--rungs",
            "single,local,docker",
            "--records",
            str(records),
            "--json",
            str(report),
        ]
    )
    verdict = json.loads(report.read_text())
    assert code == 1
    assert (verdict["outcome"], verdict["first_rung"], verdict["baseline_rung"]) == ("diverged", "local", "single")
    assert verdict["findings"][0]["cause"] == "checkpoint-key-prefix"
    assert verdict["not_run"] == {"docker": "the ladder departed at local; --keep-going runs the rungs above it"}
    assert [p.name.split("-")[3] for p in sorted(records.iterdir())] == ["local", "single"]  # docker never ran


@pytest.mark.slow
def test_the_reference_job_is_at_parity_with_its_single_process_run(
    scenarios: Path, records: Path, tmp_path: Path
) -> None:
    """Its script needs a process group, so the baseline runs it under torchrun with one process;
    its curve and weights legitimately differ from the 2x2 run's, and are notes."""
    report = tmp_path / "verdict.json"
    code = main(
        [
            "ladder",
            str(scenarios / "ddp_csv" / "job.yaml"),
            "--rungs",
            "single,local",
            "--records",
            str(records),
            "--json",
            str(report),
        ]
    )
    assert code == 0
    assert json.loads(report.read_text())["outcome"] == "parity"
    (single,) = [RunRecord.load(p) for p in records.iterdir() if "-single-" in p.name]
    assert single.manifest.topology.world_size == 1
    assert "under torchrun with one process" in single.manifest.rung_facts["baseline"]


@pytest.mark.slow
def test_keep_going_climbs_past_a_departure(scenarios: Path, records: Path, tmp_path: Path) -> None:
    report = tmp_path / "verdict.json"
    main(
        [
            "ladder",
            str(scenarios / "fault_wrapped_checkpoint" / "job.yaml"),
            "--rungs",
            "single,local,local",
            "--keep-going",
            "--records",
            str(records),
            "--json",
            str(report),
        ]
    )
    verdict = json.loads(report.read_text())
    assert verdict["rungs"] == ["single", "local", "local"] and verdict["not_run"] == {}


@pytest.mark.unit
def test_the_baseline_keeps_the_global_batch_where_the_job_says_how() -> None:
    job = JobSpec(
        name="b",
        source_dir=Path("."),
        entry_point="train.py",
        distribution="torchrun",
        instance_count=2,
        processes_per_host=2,
        hyperparameters={"batch-size": 16, "lr": 0.1},
        batch_size_hyperparameter="batch-size",
    )
    single = single_process(job)
    assert (single.world_size, single.distribution, single.hyperparameters) == (
        1,
        "none",
        {"batch-size": 64, "lr": 0.1},
    )
    as_text = job.model_copy(update={"hyperparameters": {"batch-size": "16"}})
    assert single_process(as_text).hyperparameters == {"batch-size": "64"}


@pytest.mark.parametrize(
    "hyperparameters, expected",
    [
        ({"lr": 0.1}, "names no hyperparameter of the job"),
        ({"batch-size": "large"}, "not a whole number"),
    ],
)
@pytest.mark.unit
def test_a_batch_size_hyperparameter_must_name_a_whole_number(
    hyperparameters: dict[str, object], expected: str, tmp_path: Path
) -> None:
    (tmp_path / "train.py").write_text("")
    (tmp_path / "job.yaml").write_text(
        json.dumps(
            {
                "name": "b",
                "source_dir": ".",
                "entry_point": "train.py",
                "hyperparameters": hyperparameters,
                "batch_size_hyperparameter": "batch-size",
            }
        )
    )
    with pytest.raises(JobSpecError, match=expected):
        load_job(tmp_path / "job.yaml")


@pytest.mark.slow
def test_files_written_by_hosts_the_baseline_does_not_have_are_no_divergence(
    scenarios: Path, records: Path, tmp_path: Path
) -> None:
    """A correct job that writes one file per host: the second host's file is new with the topology."""
    report = tmp_path / "verdict.json"
    code = main(
        [
            "ladder",
            str(scenarios / "hardcoded_opt_ml" / "job.yaml"),
            "--rungs",
            "single,local",
            "--records",
            str(records),
            "--json",
            str(report),
        ]
    )
    verdict = json.loads(report.read_text())
    assert code == 0 and verdict["outcome"] == "parity", verdict
