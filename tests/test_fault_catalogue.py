"""The fault catalogue (tests/data/faults/): distributed-training faults from public sources,
each with the cause the verdict must rank first. Every job is checked for shape here; one job
per mechanism climbs its ladder (the whole table: ``python bench/diagnosis_table.py
tests/data/faults``, docs/report.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.ladder.scenario import all_scenarios, load_scenario, run_scenario

FAULTS = Path(__file__).resolve().parent / "data" / "faults"
#: One fault per mechanism: the data ledger (batches, shards, order), the model ledger, the loss
#: ledger, hosts that share a file, the launcher's rank, ranks hung apart, a library's refusal,
#: samples one process loads otherwise, what a rank holds at its first step, a schedule's length,
#: the process groups each rank creates.
CLIMBED = (
    "uneven_manual_shards",
    "local_rank_sharding",
    "no_set_epoch",
    "model_shape_from_local_data",
    "grad_sum_no_divide",
    "shared_scratch_path",
    "rank_from_host_index",
    "eval_rank0_through_ddp",
    "sampler_replicas_per_node",
    "reduce_stats_not_all_reduce",
    "task_heads_added_after_ddp_wrap",
    "onecycle_steps_from_dataset_len",
    "iterable_not_sharded",
    "new_group_own_node_only",
)


@pytest.mark.unit
def test_the_catalogue_is_whole() -> None:
    directories = all_scenarios(FAULTS)
    assert len(directories) >= 25
    for directory in directories:
        spec = load_scenario(directory)
        assert spec.expect.cause, directory.name
        source = (directory / "src" / "train.py").read_text(encoding="utf-8")
        assert source.startswith('"""'), f"{directory.name}: the docstring names the fault and its source"
    assert set(CLIMBED) <= {d.name for d in directories}


@pytest.mark.slow
@pytest.mark.parametrize("name", CLIMBED)
def test_the_cause_comes_first(name: str, tmp_path: Path) -> None:
    result = run_scenario(FAULTS / name, tmp_path)
    assert result.verdict is not None, result.skipped
    assert result.as_expected, (result.verdict.outcome, result.verdict.causes, result.verdict.first_rung)
