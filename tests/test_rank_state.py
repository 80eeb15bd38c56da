"""What each rank held and did that its peers must match: the optimizer steps it took over the
same batches, the optimizer state and the parameters at its first step, the share of its
learning-rate schedule it stepped through. Each judged on canned records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fake_records import make_record

from harness.judge.verdict import judge
from harness.record.run_record import RunRecord, Status
from harness.spec.job import JobSpec

pytestmark = pytest.mark.unit

RANKS = JobSpec(name="fake", source_dir="src", entry_point="train.py", distribution="torchrun", processes_per_host=4)
ONE = JobSpec(name="fake", source_dir="src", entry_point="train.py", distribution="torchrun")


def epoch(batches: int, steps: int, epoch: int = 0) -> list[dict[str, Any]]:
    """A finished pass over loader 0: its start and its end."""
    started = {"kind": "epoch_start", "loader": 0, "site": "train.py:48", "epoch": epoch}
    ended = {
        "kind": "data_epoch",
        "loader": 0,
        "site": "train.py:48",
        "epoch": epoch,
        "batches": batches,
        "steps": steps,
        "finished": True,
    }
    return [started, ended]


def first_step(entries: int = 0, steps: list[float] | None = None, added: list[str] | None = None) -> dict[str, Any]:
    return {
        "kind": "first_step",
        "optimizer": "AdamW",
        "state_entries": entries,
        "state_steps": steps or [],
        "added_after_wrap": added or [],
        "added_count": len(added or []),
    }


def ledger(rates: list[float]) -> dict[str, Any]:
    count = len(rates)
    return {
        "kind": "steps",
        "step": list(range(count)),
        "loss": [1.0] * count,
        "backwards": [1] * count,
        "samples": [16] * count,
        "grad_norm": [None] * count,
        "lr": rates,
    }


def schedules(*made: list[Any]) -> dict[str, Any]:
    return {"kind": "schedules", "made": list(made)}


def four(tmp_path: Path, events: dict[int, list[dict[str, Any]]], status: Status = "succeeded") -> RunRecord:
    return make_record(tmp_path, "local", status=status, rank_events=events, job=RANKS)


def test_a_rank_that_skipped_the_steps_its_peers_took_over_the_same_batches_is_named(tmp_path: Path) -> None:
    # A plain GradScaler on FSDP: the rank whose shard overflowed skips every step.
    events = {r: [*epoch(16, 16), *epoch(16, 16, epoch=1)] for r in range(3)} | {3: [*epoch(16, 0), *epoch(16, 0, 1)]}
    first = judge([four(tmp_path, events)]).findings[0]
    assert (first.cause, first.rank) == ("steps-skipped-on-some-ranks", 3)
    assert (
        first.title
        == "rank 3 took 0 optimizer steps in epoch 0 of train.py:48 where its peers took 16, over the same 16 batches"
    )


@pytest.mark.parametrize(
    "counts",
    [
        [(16, 4)] * 4,  # gradient accumulation, alike on every rank
        [(16, 16), (16, 16), (16, 16), (15, 15)],  # uneven batches: another check's finding
    ],
)
def test_ranks_that_step_alike_or_draw_other_batch_counts_skip_nothing(
    tmp_path: Path, counts: list[tuple[int, int]]
) -> None:
    events = {r: epoch(*c) for r, c in enumerate(counts)}
    assert "steps-skipped-on-some-ranks" not in judge([four(tmp_path, events)]).causes


def test_parameters_added_after_the_ddp_wrap_are_named_with_the_drift_they_cause(tmp_path: Path) -> None:
    added = ["heads.score.weight", "heads.score.bias"]
    events = {r: [first_step(added=added)] for r in range(4)}
    first = judge([four(tmp_path, events)]).findings[0]
    assert first.cause == "parameters-added-after-wrap" and "parameter-drift" in first.explains
    assert first.title.startswith("2 trained parameters were added to the model after it was handed to")
    assert "added: heads.score.weight, heads.score.bias" in first.evidence


def test_one_process_has_no_copies_to_keep_alike(tmp_path: Path) -> None:
    record = make_record(tmp_path, "single", rank_events={0: [first_step(added=["head.weight"])]}, job=ONE)
    assert judge([record]).causes == []


def test_an_optimizer_state_loaded_on_one_rank_only_is_named(tmp_path: Path) -> None:
    events = {0: [first_step(6, [128.0])], **{r: [first_step()] for r in (1, 2, 3)}}
    first = judge([four(tmp_path, events)]).findings[0]
    assert (first.cause, first.rank) == ("optimizer-state-differs-across-ranks", 0)
    assert "rank 0: AdamW held state for 6 parameters (step 128)" in first.title
    assert "rank 1: AdamW held no state" in first.title


def test_optimizer_states_alike_or_sharded_alike_are_no_finding(tmp_path: Path) -> None:
    fresh = {r: [first_step()] for r in range(4)}
    # ZeRO: each rank holds the state of its own partition, all at the same step.
    zero = {r: [first_step(entries=2 + r, steps=[64.0])] for r in range(4)}
    for events in (fresh, zero):
        assert "optimizer-state-differs-across-ranks" not in judge([four(tmp_path, events)]).causes


def _pair(
    tmp_path: Path,
    single: list[dict[str, Any]],
    ranks: list[dict[str, Any]],
    status: Status = "succeeded",
) -> list[RunRecord]:
    one = make_record(tmp_path, "single", rank_events={0: single}, job=ONE)
    return [one, four(tmp_path, dict.fromkeys(range(4), ranks), status=status)]


def test_a_schedule_stepped_past_the_length_the_ranks_were_given_is_the_cause_of_the_failure(tmp_path: Path) -> None:
    # OneCycleLR sized from the dataset's length: one process steps it 62 times of 62, each rank
    # 15 of 14, and OneCycleLR refuses the 15th.
    records = _pair(
        tmp_path,
        [ledger([0.1] * 62), schedules(["OneCycleLR", "total_steps", 62, 62])],
        [ledger([0.1] * 15), schedules(["OneCycleLR", "total_steps", 14, 15])],
        status="failed",
    )
    first = judge(records).findings[0]
    assert first.cause == "lr-schedule-length-differs" and first.severity == "failure"
    assert first.title.startswith("the learning-rate schedule (OneCycleLR, total_steps=14) was stepped 15 times")


@pytest.mark.parametrize(
    ("single", "ranks"),
    [
        (["OneCycleLR", "total_steps", 62, 62], ["OneCycleLR", "total_steps", 16, 16]),  # sized from the loader
        (["CosineAnnealingLR", "T_max", 2, 2], ["CosineAnnealingLR", "T_max", 2, 2]),  # per epoch
    ],
)
def test_schedules_each_run_steps_through_alike_are_no_finding(
    tmp_path: Path, single: list[Any], ranks: list[Any]
) -> None:
    records = _pair(tmp_path, [ledger([0.1] * 62), schedules(single)], [ledger([0.1] * 16), schedules(ranks)])
    assert "lr-schedule-length-differs" not in judge(records).causes


def _cosine(steps: int, of: int) -> list[float]:
    import math

    return [0.1 * 0.5 * (1 + math.cos(math.pi * min(i, of) / of)) for i in range(steps)]


def test_a_schedule_of_the_jobs_own_that_stops_short_on_the_ranks_is_named(tmp_path: Path) -> None:
    # A LambdaLR cosine over the one-process step count: the ranks take a quarter of the steps.
    records = _pair(
        tmp_path,
        [ledger(_cosine(64, 64)), schedules(["LambdaLR", None, None, 64])],
        [ledger(_cosine(16, 64)), schedules(["LambdaLR", None, None, 16])],
    )
    first = judge(records).findings[0]
    assert first.cause == "lr-schedule-length-differs"
    assert first.title.startswith("the learning rate ends at 87% of its peak on local and at 0% on single")


@pytest.mark.parametrize(
    ("name", "single", "ranks"),
    [
        (
            "LambdaLR",
            [0.1 * min(1.0, i / 40) for i in range(64)],
            [0.1 * min(1.0, i / 40) for i in range(16)],
        ),  # warm-up
        ("ReduceLROnPlateau", [0.1] * 32 + [0.01] * 32, [0.1] * 16),  # driven by a metric
        ("LambdaLR", _cosine(64, 64), _cosine(16, 16)),  # sized from the loader
    ],
)
def test_warm_up_metric_driven_and_well_sized_schedules_are_no_finding(
    tmp_path: Path, name: str, single: list[float], ranks: list[float]
) -> None:
    records = _pair(
        tmp_path,
        [ledger(single), schedules([name, None, None, len(single)])],
        [ledger(ranks), schedules([name, None, None, len(ranks)])],
    )
    assert "lr-schedule-length-differs" not in judge(records).causes


READY_TWICE = "[rank0]: RuntimeError: Expected to mark a variable ready only once. This error is caused by one of"


@pytest.mark.parametrize("reentrant", [True, False])
def test_ddp_marking_a_parameter_ready_twice_is_put_down_to_reentrant_checkpointing_only_where_the_job_used_it(
    tmp_path: Path, reentrant: bool
) -> None:
    wrapped = {"kind": "model", "wrapper": "DistributedDataParallel", "options": {"find_unused_parameters": True}}
    used = {"kind": "activation_checkpoint", "reentrant": reentrant, "caller": "train.py:91"}
    record = four(tmp_path, {r: [wrapped, used] for r in range(4)}, status="failed")
    (record.root / "ranks" / "rank-0.log").write_text(READY_TWICE + "\n")
    causes = judge([record]).causes
    if reentrant:
        assert causes[0] == "reentrant-checkpoint-with-ddp"
    else:
        assert "reentrant-checkpoint-with-ddp" not in causes and "parameter-ready-twice" in causes


@pytest.mark.parametrize("status", ["succeeded", "failed"])
def test_ranks_that_took_no_step_where_one_process_took_some_trained_nothing(tmp_path: Path, status: Status) -> None:
    # A per-rank batch larger than the rank's shard with drop_last=True: every loader is empty.
    started = {"kind": "dist_init", "caller": "train.py:60"}
    records = _pair(tmp_path, [ledger([0.1] * 6)], [started], status=status)
    causes = judge(records).causes
    if status == "succeeded":
        assert causes[0] == "ranks-took-no-steps"
        assert judge(records).findings[0].title == "no rank took an optimizer step on local; single took 6"
    else:  # a run that failed is judged by its failure
        assert "ranks-took-no-steps" not in causes


def test_a_parity_verdict_says_when_the_ranks_trained_from_no_data_loader(tmp_path: Path) -> None:
    # A loop that indexes tensors from a sampler of its own: the data ledger saw nothing.
    records = _pair(tmp_path, [ledger([0.1] * 8)], [ledger([0.1] * 2)])
    verdict = judge(records)
    assert verdict.outcome == "parity"
    assert "data-not-observed" in [f.cause for f in verdict.findings]
    loader_pass = [*epoch(2, 2), ledger([0.1] * 2)]
    observed = judge(_pair(tmp_path, [ledger([0.1] * 8)], loader_pass))
    assert "data-not-observed" not in [f.cause for f in observed.findings]


def wrapped(group: list[int] | None = None, unregistered: str | None = None) -> dict[str, Any]:
    loose = {"count": 1, "names": ["features.projection"], "digest": unregistered} if unregistered else None
    return {
        "kind": "model",
        "wrapper": "DistributedDataParallel",
        "caller": "train.py:85",
        "digest": "same",
        "entries": [],
        "group": group,
        "unregistered": loose,
    }


def params(step: int, digest: str) -> dict[str, Any]:
    return {"kind": "params", "step": step, "sum": 1.0, "abs_sum": 2.0, "digest": digest}


@pytest.mark.parametrize("alike", [True, False])
def test_a_plain_tensor_attribute_that_differs_across_ranks_is_named(tmp_path: Path, alike: bool) -> None:
    events = {r: [wrapped(unregistered="p" if alike else f"p{r}")] for r in range(4)}
    causes = judge([four(tmp_path, events)]).causes
    if alike:  # a cached constant made alike everywhere
        assert "unregistered-tensor-differs-across-ranks" not in causes
    else:
        assert causes[0] == "unregistered-tensor-differs-across-ranks"


@pytest.mark.parametrize("split_along_groups", [True, False])
def test_replicas_wrapped_over_node_groups_that_split_along_them_are_named(
    tmp_path: Path, split_along_groups: bool
) -> None:
    groups = {0: [0, 1], 1: [0, 1], 2: [2, 3], 3: [2, 3]}
    digests = {0: "a", 1: "a", 2: "b", 3: "b"} if split_along_groups else {0: "a", 1: "c", 2: "b", 3: "b"}
    events = {r: [wrapped(group=groups[r]), params(0, digests[r])] for r in range(4)}
    verdict = judge([four(tmp_path, events)])
    if split_along_groups:
        first = verdict.findings[0]
        assert first.cause == "wrapper-group-not-world" and "parameter-drift" in first.explains
        assert first.title.startswith("DistributedDataParallel was given a process group of 2 of the 4 ranks")
    else:  # drift within a group: not the group's doing
        assert "wrapper-group-not-world" not in verdict.causes and "parameter-drift" in verdict.causes


def test_a_wrapper_over_the_whole_world_is_no_group_finding(tmp_path: Path) -> None:
    events = {r: [wrapped(group=[0, 1, 2, 3]), params(0, "a")] for r in range(4)}
    assert judge([four(tmp_path, events)]).causes == []


@pytest.mark.parametrize("outside", [0, 6])
def test_an_optimizer_stepping_tensors_no_wrapper_holds_is_named(tmp_path: Path, outside: int) -> None:
    step = {**first_step(), "stepped": 6, "outside_wrappers": outside, "outside_shapes": [[64, 16]]}
    causes = judge([four(tmp_path, {r: [step] for r in range(4)})]).causes
    assert (causes[:1] == ["optimizer-params-not-in-model"]) == bool(outside)


def loss(pos_weight: float) -> dict[str, Any]:
    return {
        "type": "BCEWithLogitsLoss",
        "digest": f"w{pos_weight}",
        "shown": {"pos_weight": [pos_weight], "reduction": "mean"},
    }


def test_loss_weights_counted_on_each_rank_s_shard_are_named_with_each_rank_s_value(tmp_path: Path) -> None:
    weights = {0: 99.0, 1: 65.7, 2: 99.0, 3: 199.0}
    events = {r: [{**first_step(), "losses": [loss(w)]}] for r, w in weights.items()}
    first = judge([four(tmp_path, events)]).findings[0]
    assert (first.cause, first.rank) == ("loss-differs-across-ranks", 1)
    assert "rank 1: BCEWithLogitsLoss(pos_weight=[65.7])" in first.evidence
    alike = {r: [{**first_step(), "losses": [loss(99.0)]}] for r in range(4)}
    assert judge([four(tmp_path, alike)]).causes == []


@pytest.mark.parametrize("hook", ["fp16_compress_hook", "bf16_compress_hook"])
def test_gradients_that_turn_non_finite_in_a_float16_hook_while_the_loss_is_finite_are_put_down_to_it(
    tmp_path: Path, hook: str
) -> None:
    registered = {"kind": "comm_hook", "hook": hook, "caller": "train.py:93"}
    overflowed = {**ledger([0.1] * 2), "loss": [2.3e10, 2.1e10], "grad_norm": [float("nan"), float("nan")]}
    causes = judge([four(tmp_path, {r: [registered, overflowed] for r in range(4)})]).causes
    assert ("comm-hook-fp16-overflow" in causes) == (hook == "fp16_compress_hook")


@pytest.mark.parametrize("spread", [True, False])
def test_a_loss_that_turned_nan_on_one_rank_and_spread_through_the_average_is_named(
    tmp_path: Path, spread: bool
) -> None:
    # A masked mean over a per-rank batch with nothing masked: 0/0 on rank 2 at step 3.
    nan = float("nan")

    def rank(r: int) -> list[dict[str, Any]]:
        losses = [0.5, 0.4, 0.3, nan if r == 2 else 0.2]
        # without the spread, every rank skipped the step alike: no gradient was reduced
        norms = [1.0, 1.0, 1.0, nan if spread else None]
        return [{**ledger([0.1] * 4), "loss": losses, "grad_norm": norms}]

    verdict = judge([four(tmp_path, {r: rank(r) for r in range(4)})])
    if spread:
        first = verdict.findings[0]
        assert (first.cause, first.rank, first.step) == ("loss-non-finite-on-some-ranks", 2, 3)
        assert first.title.startswith("the loss turned non-finite at optimizer step 3 on rank 2 while ranks 0, 1, 3")
    else:
        assert "loss-non-finite-on-some-ranks" not in verdict.causes


@pytest.mark.parametrize("alike", [True, False])
def test_a_partitioning_optimizer_given_its_parameters_in_another_order_on_a_rank_is_named(
    tmp_path: Path, alike: bool
) -> None:
    # AdamW's decay and no-decay groups made from sets: each process orders them its own way.
    names = ["module.a.weight", "module.b.weight", "module.a.bias", "module.b.bias"]
    order = {r: names if alike or r != 2 else [names[1], names[0], *names[2:]] for r in range(4)}
    events = {
        r: [{**first_step(), "optimizer": "ZeroRedundancyOptimizer", "partitioned_order": order[r]}] for r in order
    }
    causes = judge([four(tmp_path, events)]).causes
    if alike:
        assert causes == []
    else:
        assert causes[0] == "optimizer-param-order-differs-across-ranks"
        assert (
            judge([four(tmp_path, events)])
            .findings[0]
            .title.endswith("parameter 0 is module.b.weight on rank 2 and module.a.weight on rank 0")
        )
