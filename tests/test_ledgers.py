"""The ledger checks on canned records: the data ledger (uneven batches, overlapping or
incomplete shards, an order that repeats), the model ledger (a model that differs across ranks)
and the loss ledger (a distributed run that learns otherwise than one process), and a finding
that explains others leading the verdict with them folded under it."""

from __future__ import annotations

import base64
import zlib
from pathlib import Path
from typing import Any

import pytest
from fake_records import make_record

from harness.judge.findings import Finding
from harness.judge.verdict import judge

pytestmark = pytest.mark.unit

SITE = "train.py:20"


def bitmap(indices: list[int], length: int) -> str:
    value = sum(1 << i for i in set(indices))
    return base64.b64encode(zlib.compress(value.to_bytes((length + 7) // 8, "little"))).decode()


def epoch(
    rank_indices: list[int],
    *,
    number: int = 0,
    length: int = 64,
    batch: int = 8,
    order: str | None = None,
    shuffle: bool = True,
    replacement: bool = False,
    steps: bool = True,
) -> list[dict[str, Any]]:
    """One rank's events for one pass: the pass opens, a batch (and a step) per ``batch``
    samples, then the pass closes with what it drew."""
    describe = {"dataset": "map", "length": length, "sampler": "DistributedSampler", "shuffle": shuffle}
    out: list[dict[str, Any]] = [
        {"kind": "epoch_start", "loader": 0, "site": SITE, "epoch": number, **describe, "replacement": replacement}
    ]
    batches = max(1, -(-len(rank_indices) // batch))
    for n in range(batches):
        out.append(
            {
                "kind": "batch",
                "loader": 0,
                "epoch": number,
                "i": n + 1,
                "digest": repr(rank_indices[n * batch : (n + 1) * batch]),
                "size": batch,
            }
        )
        out.append({"kind": "collective", "op": "all_reduce", "seq": n + 1, "shapes": [[9]], "caller": "train.py:30"})
    out.append(
        {
            "kind": "data_epoch",
            "loader": 0,
            "site": SITE,
            "epoch": number,
            "finished": True,
            **describe,
            "replacement": replacement,
            "batches": batches,
            "samples": len(rank_indices),
            "repeats": 0,
            "steps": batches if steps else 0,
            "order": order or repr(rank_indices),
            "first": rank_indices[:8],
            "bitmap": bitmap(rank_indices, length),
        }
    )
    return out


def verdict_findings(tmp: Path, events: dict[int, list[dict[str, Any]]], status: str = "succeeded") -> list[Finding]:
    return judge([make_record(tmp, "local", rank_events=events, status=status)]).findings  # type: ignore[arg-type]


def causes(found: list[Finding]) -> list[str | None]:
    return [f.cause for f in found if f.severity != "note"]


def test_disjoint_shards_padded_by_the_sampler_are_no_finding(tmp_path: Path) -> None:
    # 62 samples over 2 ranks, padded to 32 each: sample 0 is drawn twice, by design
    events = {0: epoch(list(range(0, 62, 2)) + [0]), 1: epoch(list(range(1, 62, 2)) + [1])}
    assert causes(verdict_findings(tmp_path, {r: e for r, e in events.items()})) == []


def test_shards_by_local_rank_overlap_across_hosts(tmp_path: Path) -> None:
    halves = [list(range(0, 64, 2)), list(range(1, 64, 2))]
    events = {rank: epoch(halves[rank % 2]) for rank in range(4)}
    (finding,) = [f for f in verdict_findings(tmp_path, events) if f.severity != "note"]
    assert finding.cause == "data-overlap" and "64 samples drawn more than once" in finding.title
    assert any("ranks 0 and 2 both drew 32 samples (the same shard)" in line for line in finding.evidence)


def test_samples_no_rank_draws_are_named_with_examples(tmp_path: Path) -> None:
    quarters = [list(range(q, 64, 4)) for q in range(4)]
    events = {rank: epoch(quarters[rank % 2]) for rank in range(4)}  # rank = LOCAL_RANK: quarters 2, 3 never drawn
    (finding,) = [f for f in verdict_findings(tmp_path, events) if f.severity != "note"]
    assert finding.cause == "data-unseen"
    assert finding.title.startswith(f"32 of 64 samples of {SITE} were drawn by no rank in epoch 0")
    assert "never drawn: 2, 3, 6, 7, 10, ..." in finding.evidence


def test_sampling_with_replacement_and_evaluation_loaders_are_left_out(tmp_path: Path) -> None:
    everything = list(range(64))
    with_replacement = {rank: epoch(everything[:: 1 - 2 * rank], replacement=True) for rank in range(2)}
    assert causes(verdict_findings(tmp_path, with_replacement)) == []
    evaluation = {rank: epoch(everything[rank::3], steps=False) for rank in range(2)}
    assert causes(verdict_findings(tmp_path, evaluation)) == []


def test_a_shuffle_that_repeats_every_epoch(tmp_path: Path) -> None:
    halves = [list(range(0, 64, 2)), list(range(1, 64, 2))]
    same = {r: epoch(halves[r], number=0, order=f"o{r}") + epoch(halves[r], number=1, order=f"o{r}") for r in range(2)}
    (finding,) = [f for f in verdict_findings(tmp_path, same) if f.severity != "note"]
    assert finding.cause == "order-repeats" and "every rank draws the same order in each of 2 epochs" in finding.title
    fresh = {r: epoch(halves[r], number=0, order="a") + epoch(halves[r], number=1, order="b") for r in range(2)}
    assert causes(verdict_findings(tmp_path, fresh)) == []
    unshuffled = {
        r: epoch(halves[r], number=0, shuffle=False) + epoch(halves[r], number=1, shuffle=False) for r in range(2)
    }
    assert causes(verdict_findings(tmp_path, unshuffled)) == []


def test_uneven_batches_explain_the_mismatch_and_the_hang_they_cause(tmp_path: Path) -> None:
    events = {rank: epoch(list(range(rank, 44, 4))) for rank in range(4)}  # 11, 11, 11, 11 samples
    events[0] = epoch(list(range(0, 48, 4)) + [1, 2, 3, 5, 6, 7, 9, 10], length=64)  # 20 samples: 3 batches
    events[0].insert(-1, {"kind": "collective", "op": "barrier", "seq": 4, "shapes": [], "caller": "train.py:40"})
    found = verdict_findings(tmp_path, events, status="hung")
    first = found[0]
    assert first.cause == "uneven-batches" and first.severity == "failure"
    assert first.title.endswith("rank 0 3, ranks 1, 2, 3 2")
    assert "rank 0's batch 3, which its peers never drew, met all_reduce #3 (train.py:30)" in first.evidence
    assert any(line.startswith("consequence: ") and "(collective-mismatch)" in line for line in first.evidence)
    assert "collective-mismatch" not in causes(found[1:])


def test_uneven_batches_in_a_run_that_succeeded_are_a_note(tmp_path: Path) -> None:
    events = {0: epoch(list(range(0, 24))), 1: epoch(list(range(24, 40)))}  # 3 and 2 batches, Join-style
    uneven = [f for f in verdict_findings(tmp_path, events) if f.cause == "uneven-batches"]
    assert [f.severity for f in uneven] == ["note"]


def model(entries: list[list[Any]]) -> dict[str, Any]:
    import hashlib
    import json

    digest = hashlib.blake2b(json.dumps(entries).encode(), digest_size=12).hexdigest()
    return {
        "kind": "model",
        "wrapper": "DistributedDataParallel",
        "group": None,
        "caller": "train.py:12",
        "count": len(entries),
        "digest": digest,
        "entries": entries,
    }


def test_a_model_that_differs_across_ranks_names_the_first_parameter_with_both_values(tmp_path: Path) -> None:
    same = [["emb.weight", [24, 32], "float32", "cpu", True], ["head.weight", [2, 32], "float32", "cpu", True]]
    other = [["emb.weight", [22, 32], "float32", "cpu", True], ["head.weight", [2, 32], "float32", "cpu", False]]
    events = {0: [model(same)], 1: [model(same)], 2: [model(other)]}
    found = verdict_findings(tmp_path, events, status="failed")
    assert found[0].cause == "model-differs" and found[0].severity == "failure"
    assert found[0].title.endswith(
        "(train.py:12): parameter 0 (emb.weight) shape is [22, 32] on rank 2 and [24, 32] on rank 0"
    )
    assert "parameter 1 (head.weight) requires_grad is False on rank 2 and True on rank 0" in found[0].evidence
    alike = {0: [model(same)], 1: [model(same)]}
    assert causes(verdict_findings(tmp_path, alike)) == []


def steps(losses: list[float], grads: list[float], samples: int, lr: float = 0.1) -> list[dict[str, Any]]:
    """A rank's loss ledger as the probe writes it: one ``steps`` event, a list per field."""
    count = len(losses)
    return [
        {
            "kind": "steps",
            "step": list(range(count)),
            "loss": losses,
            "backwards": [1] * count,
            "samples": [samples] * count,
            "grad_norm": grads,
            "lr": [lr] * count,
        }
    ]


def ladder(tmp: Path, base: list[dict[str, Any]], ranks: dict[int, list[dict[str, Any]]]) -> list[Finding]:
    below = make_record(tmp, "single", rank_events={0: base})
    above = make_record(tmp, "local", rank_events=ranks)
    return judge([below, above]).findings


LOSSES = [1.0 - 0.05 * i for i in range(12)]
GRADS = [2.0 - 0.1 * i for i in range(12)]


def test_the_same_global_batches_learn_alike(tmp_path: Path) -> None:
    base = steps(LOSSES, GRADS, 32)
    ranks = {r: steps([x * (1 + 1e-6) for x in LOSSES], GRADS, 8) for r in range(4)}
    assert causes(ladder(tmp_path, base, ranks)) == []


def test_gradients_summed_over_ranks_are_named_at_the_first_step(tmp_path: Path) -> None:
    base = steps(LOSSES, GRADS, 32)
    ranks = {r: steps(LOSSES, [g * 4 for g in GRADS], 8) for r in range(4)}
    (finding,) = [f for f in ladder(tmp_path, base, ranks) if f.severity != "note"]
    assert finding.cause == "learning-differs" and finding.step == 0
    assert (
        finding.title == "local learns differently from single from step 0: gradient norm 8 on local, 2 on single (x4)"
    )


def test_a_grown_global_batch_is_judged_by_its_gradient_scale_only(tmp_path: Path) -> None:
    base = steps(LOSSES, GRADS, 8)
    quieter = {r: steps([x * 1.1 for x in LOSSES], [g * 0.6 for g in GRADS], 8) for r in range(4)}
    assert causes(ladder(tmp_path, base, quieter)) == []
    summed = {r: steps(LOSSES, [g * 3.5 for g in GRADS], 8) for r in range(4)}
    assert causes(ladder(tmp_path, base, summed)) == ["learning-differs"]


def test_explanations_chain_to_the_finding_nothing_explains() -> None:
    from harness.judge.verdict import rank_findings

    def finding(cause: str, confidence: float, explains: tuple[str, ...] = ()) -> Finding:
        return Finding(
            kind="ranks", severity="failure", title=cause, cause=cause, confidence=confidence, explains=explains
        )

    hang = finding("hang", 0.7)
    mismatch = finding("collective-mismatch", 0.95, explains=("hang",))
    restated = finding("collective-mismatch", 0.75, explains=("hang", "job-failed"))
    uneven = finding("uneven-batches", 0.9, explains=("collective-mismatch", "hang", "job-failed"))
    (first,) = rank_findings([hang, mismatch, restated, uneven])
    assert first.cause == "uneven-batches"
    assert first.evidence == [
        "consequence: collective-mismatch (collective-mismatch)",
        "consequence: hang (hang)",
    ]


@pytest.mark.parametrize("ranks_reach", [512, 2048])
def test_a_sampler_with_replacement_is_compared_with_one_process_by_the_parts_of_the_dataset_it_reached(
    tmp_path: Path, ranks_reach: int
) -> None:
    # A class-balancing WeightedRandomSampler over each rank's shard of 512 whose positions were
    # used as dataset indices: every rank draws from the first quarter only.
    import random

    draw = random.Random(0)

    def drawn(reach: int, count: int) -> list[dict[str, Any]]:
        indices = draw.choices(range(reach), k=count)
        return epoch(indices, length=2048, batch=16, replacement=True)

    one = make_record(tmp_path, "single", rank_events={0: drawn(2048, 2048)})
    ranks = make_record(tmp_path, "local", rank_events={r: drawn(ranks_reach, 512) for r in range(4)})
    verdict = judge([one, ranks])
    if ranks_reach == 2048:  # the same distribution: no part is missed
        assert "data-unseen" not in verdict.causes
    else:
        first = verdict.findings[0]
        assert first.cause == "data-unseen"
        assert first.title.startswith(f"the ranks never drew from samples 512..2047 of {SITE}")


def told(events: list[dict[str, Any]], epoch: int) -> list[dict[str, Any]]:
    """``events`` of one pass whose sampler was told ``set_epoch(epoch)``."""
    return [{**e, "sampler_epoch": epoch} if e["kind"] == "epoch_start" else e for e in events]


def test_ranks_whose_samplers_are_at_different_epochs_are_named_before_what_it_does_to_the_data(
    tmp_path: Path,
) -> None:
    """fault b6a_resume_start_epoch_rank0_only: rank 0 alone read the checkpoint and resumed at epoch 1."""
    quarters = [list(range(r, 64, 4)) for r in range(4)]
    events = {0: told(epoch(list(range(1, 64, 4))), 1), **{r: told(epoch(quarters[r]), 0) for r in (1, 2, 3)}}
    (finding,) = [f for f in verdict_findings(tmp_path, events) if f.severity != "note"]
    assert finding.cause == "ranks-at-different-epochs" and finding.rank == 0
    assert finding.title.endswith("ranks 1, 2, 3 at epoch 0; rank 0 at epoch 1")
    assert "data-overlap" in finding.explains


def test_ranks_told_the_same_epoch_are_no_finding(tmp_path: Path) -> None:
    halves = [list(range(0, 64, 2)), list(range(1, 64, 2))]
    assert causes(verdict_findings(tmp_path, {r: told(epoch(halves[r]), 3) for r in range(2)})) == []


def trained_after_wrap(step: int = 20) -> dict[str, Any]:
    names = ["backbone.0.weight", "backbone.0.bias", "backbone.2.weight", "backbone.2.bias"]
    return {"kind": "trainable_after_wrap", "step": step, "names": names, "count": 4}


def test_parameters_unfrozen_after_the_wrap_are_named_with_the_step(tmp_path: Path) -> None:
    """fault b6b_unfreeze_backbone_after_ddp_wrap."""
    halves = [list(range(0, 64, 2)), list(range(1, 64, 2))]
    events = {r: [*epoch(halves[r]), trained_after_wrap()] for r in range(2)}
    (finding,) = [f for f in verdict_findings(tmp_path, events) if f.severity != "note"]
    assert finding.cause == "trainable-after-wrap" and finding.step == 20
    assert finding.title.startswith("4 parameters frozen when DistributedDataParallel wrapped the model were trained")


def test_parameters_unfrozen_in_one_process_are_no_finding(tmp_path: Path) -> None:
    assert causes(verdict_findings(tmp_path, {0: [*epoch(list(range(64))), trained_after_wrap()]})) == []
