"""Ranks out of step (a late rank, a rank that left the loop early), a state dict a wrapper
renamed, weights that turned non-finite on one rung, and what a parity verdict says it did not
compare: each judged on canned records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from fake_records import make_record

from harness.judge import artifacts, tensors
from harness.judge.verdict import judge
from harness.spec.job import JobSpec

pytestmark = pytest.mark.unit

JOB = JobSpec(name="fake", source_dir="src", entry_point="train.py", distribution="torchrun", processes_per_host=4)
TIMED_OUT = "RuntimeError: [gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 2000ms for recv operation"
PEER_LOST = "RuntimeError: [gloo/transport/tcp/pair.cc:553] Connection closed by peer [10.0.0.2]:19849"


def collective(t: float, line: int = 78) -> dict[str, Any]:
    return {"t": t, "kind": "collective", "op": "broadcast", "shapes": [[2, 8]], "caller": f"train.py:{line}"}


def started(t: float) -> dict[str, Any]:
    return {"t": t, "kind": "dist_init", "caller": "train.py:68"}


def epoch(batches: int, finished: bool) -> dict[str, Any]:
    return {"t": 2.0, "kind": "data_epoch", "site": "train.py:48", "batches": batches, "finished": finished}


def rank(number: int, exit_code: int | None, exception: str | None = None) -> dict[str, Any]:
    return {"rank": number, "exit_code": exit_code, "exception": exception, "ended_at": "2026-12-07T08:18:17.597Z"}


def test_a_rank_still_in_its_own_code_when_its_peers_time_out_is_late_not_mismatched(tmp_path: Path) -> None:
    events = {0: [started(1.0)], **{r: [started(1.0), collective(1.5)] for r in (1, 2, 3)}}
    processes = [rank(0, None), *(rank(r, 1, TIMED_OUT) for r in (1, 2, 3))]
    record = make_record(tmp_path, "local", status="failed", rank_events=events, processes=processes, job=JOB)
    verdict = judge([record])
    first = verdict.findings[0]
    assert first.cause == "late-rank" and first.rank == 0
    assert first.title.startswith("rank 0 had not reached broadcast #1 at train.py:78 when ranks 1, 2, 3 gave up")
    assert "after 2 s" in first.title
    assert "collective-mismatch" not in verdict.causes[:1]


def test_a_rank_that_times_out_itself_was_waiting_elsewhere_and_is_no_late_rank(tmp_path: Path) -> None:
    events = {0: [started(1.0), collective(1.2, line=90)], **{r: [started(1.0), collective(1.5)] for r in (1, 2, 3)}}
    events[1].append(collective(1.6))
    processes = [rank(r, 1, TIMED_OUT) for r in range(4)]
    record = make_record(tmp_path, "local", status="failed", rank_events=events, processes=processes, job=JOB)
    assert "late-rank" not in judge([record]).causes


def test_a_rank_that_ended_cleanly_before_its_peers_left_the_loop_early(tmp_path: Path) -> None:
    events = {r: [started(1.0), epoch(9, False)] for r in (0, 2, 3)}
    events[1] = [started(1.0), epoch(8, False)]
    processes = [rank(1, 0), *(rank(r, 1, PEER_LOST) for r in (0, 2, 3))]
    record = make_record(tmp_path, "local", status="failed", rank_events=events, processes=processes, job=JOB)
    first = judge([record]).findings[0]
    assert first.cause == "rank-left-early" and first.rank == 1
    assert "8 batches against up to 9" in first.title
    assert any("rank 0: drew 9 batches" in line and "(lost its peer)" in line for line in first.evidence)


def test_a_rank_that_finished_its_epochs_is_not_early(tmp_path: Path) -> None:
    """Uneven shards exhaust a rank's sampler: its epoch is finished, which the data ledger explains."""
    events = {r: [started(1.0), epoch(9, True)] for r in (0, 2, 3)}
    events[1] = [started(1.0), epoch(8, True)]
    processes = [rank(1, 0), *(rank(r, 1, PEER_LOST) for r in (0, 2, 3))]
    record = make_record(tmp_path, "local", status="failed", rank_events=events, processes=processes, job=JOB)
    assert "rank-left-early" not in judge([record]).causes


def test_a_state_dict_that_carries_the_wrappers_prefix_is_named(tmp_path: Path) -> None:
    refused = (
        "RuntimeError: Error(s) in loading state_dict for Regressor:\n"
        '\tMissing key(s) in state_dict: "body.0.weight", "body.0.bias", "head.weight". \n'
        '\tUnexpected key(s) in state_dict: "module.body.0.weight", "module.body.0.bias", "module.head.weight". '
    )
    processes = [rank(0, 1, refused), rank(1, 0)]
    record = make_record(tmp_path, "local", status="failed", processes=processes, job=JOB)
    first = judge([record]).findings[0]
    assert first.cause == "checkpoint-key-prefix" and first.rank == 0
    assert "the loaded keys carry 'module.'" in first.title
    assert first.hint == "save model.module.state_dict() instead of the DDP wrapper's state_dict()"
    other = refused.replace("module.body.0.weight", "encoder.weight")
    unrelated = make_record(tmp_path, "local", status="failed", processes=[rank(0, 1, other.replace("module.", "x"))])
    assert "checkpoint-key-prefix" not in judge([unrelated]).causes


def test_weights_that_turn_non_finite_on_one_rung_depart_whatever_the_topology() -> None:
    finite = {"w": torch.ones(4), "b": torch.zeros(2)}
    broken = {"w": torch.tensor([1.0, float("nan"), float("inf"), 1.0]), "b": torch.zeros(2) + 0.5}
    diff = tensors.compare_state(finite, broken)
    assert {t.name: t.nonfinite for t in diff.tensors} == {"w": (0, 2), "b": (0, 0)}
    found = artifacts._findings("model.tar.gz:model.pt", diff, "single", "local", "the world size changes")
    causes = [f.cause for f in found if f.severity != "note"]
    assert causes == ["weights-non-finite"]
    assert found[0].title == "model.tar.gz:model.pt: 1 tensors hold NaN or infinite values on local, finite on single"
    reverse = tensors.compare_state(broken, finite)
    assert {t.name: t.nonfinite for t in reverse.tensors}["w"] == (2, 0)


def test_parity_says_what_it_did_not_compare(tmp_path: Path) -> None:
    """A parity verdict keeps the notes on what a topology change left uncompared."""
    single = make_record(tmp_path, "single", losses=[1.0, 0.5])
    local = make_record(tmp_path, "local", losses=[1.0, 0.5], job=JOB)
    verdict = judge([single, local])
    assert verdict.outcome == "parity"
    assert verdict.findings and {f.severity for f in verdict.findings} == {"note"}
    assert "topology-changes-numbers" in {f.cause for f in verdict.findings}


def test_a_replay_left_out_for_batch_statistics_names_the_batchnorm_layers(tmp_path: Path) -> None:
    from harness.judge import replay

    entries = [["0.weight", [4, 4], "float32", "cpu", True], ["1.running_mean", [4], "float32", "cpu", "buffer"]]
    with_bn = make_record(tmp_path, "local", rank_events={0: [{"t": 1.0, "kind": "model", "entries": entries}]})
    assert "normalises over the batch (1)" in replay._batch_statistics(with_bn)
    plain = make_record(tmp_path, "local", rank_events={0: [{"t": 1.0, "kind": "model", "entries": entries[:1]}]})
    assert replay._batch_statistics(plain) == ""


def steps(lrs: list[float]) -> dict[str, Any]:
    return {"t": 3.0, "kind": "steps", "step": list(range(len(lrs))), "lr": lrs, "loss": [1.0] * len(lrs)}


def test_ranks_that_apply_different_learning_rates_are_named_before_their_drift(tmp_path: Path) -> None:
    events = {r: [steps([0.3, 0.3, 0.15])] for r in (0, 2, 3)}
    events[1] = [steps([0.3, 0.3, 0.3])]
    drift = {"kind": "params", "sum": 1.0, "abs_sum": 1.0}
    for r in events:
        events[r].append({**drift, "t": 4.0, "step": 2, "digest": "b" if r == 1 else "a"})
    verdict = judge([make_record(tmp_path, "local", rank_events=events, job=JOB)])
    first = verdict.findings[0]
    assert first.cause == "learning-rate-differs-across-ranks" and first.step == 2 and first.rank == 1
    assert "rank 1 0.3 against 0.15" in first.title
    assert "parameter-drift" not in verdict.causes  # folded under it
    same = {r: [steps([0.3, 0.3, 0.15])] for r in range(4)}
    assert judge([make_record(tmp_path, "local", rank_events=same, job=JOB)]).causes == []


def test_ranks_of_a_sharding_wrapper_hold_different_parameters_by_design(tmp_path: Path) -> None:
    """FSDP's flat shards: digests and each rank's gradient norm differ across ranks; no drift."""
    wrapped = {"t": 0.5, "kind": "model", "wrapper": "FullyShardedDataParallel", "entries": []}
    events = {
        r: [wrapped, {"t": 4.0, "kind": "params", "step": 0, "sum": r, "abs_sum": r, "digest": str(r)}]
        for r in range(4)
    }
    assert "parameter-drift" not in judge([make_record(tmp_path, "local", rank_events=events, job=JOB)]).causes
    replicated = {r: evs[1:] for r, evs in events.items()}
    assert "parameter-drift" in judge([make_record(tmp_path, "local", rank_events=replicated, job=JOB)]).causes


def ledger(norms: list[float], backwards: list[int]) -> list[dict[str, Any]]:
    """A DDP model's wrap and the loss ledger of its steps: one gradient norm per step."""
    wrapped = {"t": 0.5, "kind": "model", "wrapper": "DistributedDataParallel", "entries": [], "group": None}
    n = len(norms)
    steps = {"t": 3.0, "kind": "steps", "step": list(range(n)), "loss": [1.0] * n, "lr": [0.1] * n}
    return [wrapped, {**steps, "grad_norm": norms, "backwards": backwards}]


def test_steps_taken_with_gradients_ddp_never_averaged_are_named(tmp_path: Path) -> None:
    """The short accumulation window at an epoch's end, all of it inside no_sync(): the ranks' norms
    part at that step and agree again after it, where DDP averaged."""
    averaged = [1.26, 0.74, 0.67, 1.07]
    events = {r: ledger([*averaged, 1.2 + r / 10, *averaged], [4, 4, 4, 4, 2, 4, 4, 4, 4]) for r in range(4)}
    verdict = judge([make_record(tmp_path, "local", rank_events=events, job=JOB)])
    first = verdict.findings[0]
    assert first.cause == "step-with-unaveraged-gradients" and first.step == 4
    assert "rank 0 1.2, rank 1 1.3, rank 2 1.4, rank 3 1.5" in first.evidence[0]
    assert "backward passes before those steps: 2; before the steps that agree: 4" in first.evidence


@pytest.mark.parametrize(
    "case",
    ["every step averaged", "averaging stops for good", "sharded", "a subgroup", "no DDP"],
)
def test_ranks_whose_gradients_differ_by_design_are_no_unaveraged_step(case: str, tmp_path: Path) -> None:
    averaged = [1.26, 0.74, 0.67, 1.07]
    if case == "every step averaged":
        events = {r: ledger(averaged * 2, [4] * 8) for r in range(4)}
    elif case == "averaging stops for good":  # local SGD after its warm-up
        events = {r: ledger([*averaged, *(1.0 + r / 10 + s for s in range(4))], [1] * 8) for r in range(4)}
    else:
        events = {r: ledger([*averaged, 1.2 + r / 10, *averaged], [1] * 9) for r in range(4)}
        for r in events:
            model = events[r][0]
            if case == "sharded":
                model["wrapper"] = "FullyShardedDataParallel"
            elif case == "a subgroup":
                model["group"] = [0, 1] if r < 2 else [2, 3]
            else:
                events[r] = events[r][1:]
    verdict = judge([make_record(tmp_path, "local", rank_events=events, job=JOB)])
    assert "step-with-unaveraged-gradients" not in verdict.causes
