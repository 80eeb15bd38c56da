"""Differential replay: the distributed run's first optimizer steps against one process doing the
same work.

A bug in the distributed program itself (gradients summed and not averaged, a loss summed over
the local batch, an all-reduce on top of DDP's own) makes every distributed rung learn alike, so
rung against rung sees nothing. Here the ladder replays the first distributed run it meets on the
``single`` rung (``replay/`` in that record): the probe hands the one process the weights rank 0
gave its wrapper and, step by step, the global batch every rank drew together (the dataset
indices of each rank's batch, in rank order), and records each parameter's gradient norm before
the optimizer step, as every rank recorded it after the reduction. Where the program is right
they agree to float rounding; the first step and parameter that differ are the finding.

What one process cannot draw as the ranks drew is never compared, and the finding says what was
left out: a step whose forward or backward drew random numbers (dropout, random masks: the random
state moved between the batch and the optimizer step), samples that differ when drawn again
(random augmentation, a collate that pads per batch: each rank's share of the replayed batch is
digested as the rank digested its own), weights the optimizer's parameters cannot take (another
order or count), steps where a rank drew no batch or trained on several (gradient accumulation),
a one-process step that consumed another number of batches than the ranks', or trained from
another loader than the one replayed, processes of the job that recorded as one. Batches are
handed out in the order the ranks drew them (a loader wrapper that fetches one ahead draws two
before its first step); a step given a closure is measured once the closure has run. Once a step
is left out, the weights after it are no longer the same, so the steps after it are too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from harness.judge.findings import Finding
from harness.judge.protocol import CheckContext
from harness.record.run_record import RunRecord
from harness.spec.job import JobSpec
from harness.spec.workload import Workload

#: Where a distributed record keeps its replay (a record of the ``single`` rung).
REPLAY_DIR = "replay"
#: Gradient norms of one process and of the ranks after the reduction agree to float rounding
#: (other summation orders: about 1e-6 relative in float32); a bug changes them by a factor.
RTOL, ATOL = 1e-3, 1e-9
#: The loss over the global batch against the ranks' mean: one mean, summed in other orders.
LOSS_RTOL = 1e-4


def replay_of(record: RunRecord) -> RunRecord | None:
    runs = sorted(p for p in (record.root / REPLAY_DIR).glob("*") if (p / "manifest.json").is_file())
    return RunRecord.load(runs[-1]) if runs else None


def _steps(events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {int(e["step"]): e for e in events if e.get("kind") == "replay_step"}


def _names(record: RunRecord) -> list[str]:
    for event in record.rank_events().get(0, []):
        if event.get("kind") == "model":
            return [str(entry[0]) for entry in event.get("entries", []) if entry[-1] != "buffer"]
    return []


def _batch_statistics(record: RunRecord) -> str:
    """Where the model keeps running batch statistics (BatchNorm's buffers), what they say about
    a loss that is not the ranks' mean: each rank normalises over its own batch, unless
    SyncBatchNorm makes the statistics global (then the loss would have been the mean)."""
    for event in record.rank_events().get(0, []):
        if event.get("kind") == "model":
            layers = sorted(
                {
                    str(entry[0]).rsplit(".", 1)[0]
                    for entry in event.get("entries", [])
                    if str(entry[0]).endswith("running_mean")
                }
            )
            if layers:
                return (
                    f"; the model normalises over the batch ({', '.join(layers[:4])}): without SyncBatchNorm each "
                    "rank's statistics are its own batch's, not the global batch's"
                )
            return ""
    return ""


def _left_out(replay: list[dict[str, Any]], step: int, mine: dict[str, Any]) -> str | None:
    """Why ``step`` of the replay (``mine``: its ``replay_step``) is not comparable, or None."""
    notes = [e for e in replay if e.get("kind") == "replay"]
    joined = [e for e in replay if e.get("kind") == "dist_init"]
    if len(joined) > 1:  # ranks of their own, each handed the global batch, compare; one stream of several does not
        return (
            f"{len(joined)} processes of the job recorded as one on the single rung: it starts its ranks itself "
            "(a trainer given several devices) before any rank variable is set, so their steps cannot be told apart"
        )
    weights = next((e["weights"] for e in notes if "weights" in e), None)
    if weights != "loaded":
        return f"the initial weights were not loaded: {weights or 'no optimizer was made'}"
    data = {int(e["draw"]): e["data"] for e in notes if "draw" in e and "data" in e}
    if step not in data:
        plan: dict[str, Any] = next((e["replay_plan"] for e in notes if "replay_plan" in e), {})
        if plan.get("stopped"):
            return f"the distributed run cannot be replayed from {plan['stopped']}"
        return "the one process drew no replayed batch for this step"
    differs = next((data[draw] for draw in sorted(data) if draw <= step and data[draw] != "equal"), None)
    if differs is not None:
        return (
            f"the samples differ when drawn again ({differs}): random augmentation, a collate that pads per "
            "batch, or not the recorded data set"
        )
    loader = next((e["loader"] for e in notes if "loader" in e), None)
    if (mine.get("loaders") or [None])[-1] != loader:
        return "the one process's step trained on batches of another loader than the one replayed"
    if any(e.get("step") == step and e.get("random") for e in notes):
        return "the step drew random numbers between its batch and its optimizer step (dropout, a random mask)"
    return None


def _loaded_otherwise(replay: list[dict[str, Any]], step: int) -> dict[str, Any] | None:
    """The first draw up to ``step`` whose ranks' shares one process loaded with other values:
    the same shapes, and no random number drawn while loading (so no augmentation, no padding);
    None where every share was equal, or where a difference may be randomness."""
    if sum(1 for e in replay if e.get("kind") == "dist_init") > 1:
        return None
    for event in sorted((e for e in replay if e.get("kind") == "replay" and "draw" in e), key=lambda e: e["draw"]):
        if int(event["draw"]) > step:
            return None
        if event.get("data") != "equal":
            return event if event.get("same_shapes_no_random") else None
    return None


def _sharded_channels(record: RunRecord) -> str:
    channels = record.manifest.job.channels
    return ", ".join(sorted(name for name, c in channels.items() if c.distribution == "ShardedByS3Key"))


def _rooted_result(record: RunRecord, only: int) -> dict[str, Any] | None:
    """A collective whose result only ``only`` received (``reduce``, ``gather`` to it), issued by
    every rank before its first batch: what leaves the other ranks a value of their own."""
    found = None
    for rank, events in record.iter_rank_events().items():
        mine = None
        for event in events:
            if event.get("kind") == "batch":
                break
            if event.get("kind") == "collective" and event.get("root") == only:
                mine = event
                break
        if mine is None:
            return None
        if rank == only:
            found = mine
    return found


def _samples_differ(
    record: RunRecord,
    replay: RunRecord,
    ranks: dict[int, dict[int, dict[str, Any]]],
    step: int,
    note: dict[str, Any],
) -> Finding:
    differ = sorted(int(r) for r in note.get("ranks") or [])
    alike = [r for r in sorted(ranks) if r not in differ]
    draw = int(note["draw"])
    evidence = [
        f"draw {draw} (step {step}): one process given the same dataset indices loads other samples than "
        f"rank{'s' if len(differ) > 1 else ''} {', '.join(map(str, differ))} did"
        + (f"; rank{'s' if len(alike) > 1 else ''} {', '.join(map(str, alike))} loaded the same" if alike else ""),
        "the same shapes, and loading drew no random number (no augmentation, no padding): the data set holds "
        "other values on those ranks",
    ]
    indices = (ranks.get(differ[0], {}).get(step, {}).get("indices") or [[]])[-1] or []
    if indices:
        evidence.append(f"rank {differ[0]}'s indices at step {step}: {indices[:8]}{' ...' if len(indices) > 8 else ''}")
    evidence.append(f"replayed on single: {replay.root.relative_to(record.root).as_posix()}")
    rooted = _rooted_result(record, alike[0]) if len(alike) == 1 else None
    failed = record.status != "succeeded"
    explains = ("replay-differs", "learning-differs", "weights-differ", "metric-divergence", "parameter-drift")
    if rooted is not None:
        where = rooted.get("user") or rooted.get("caller") or "?"
        return Finding(
            kind="ranks",
            severity="failure" if failed else "divergence",
            title=f"only rank {alike[0]} received the result of {rooted['op']} (collective #{rooted['seq']}, {where}), "
            "and only its data matches one process: the other ranks used what the collective leaves them",
            evidence=[
                f"{rooted['op']}(dst={alike[0]}) at {where}: every rank called it before its first batch; off its "
                "root the output is the rank's own or a half-reduced value",
                *evidence,
            ],
            hint=f"every rank uses the result: call all_reduce (or all_gather) instead of {rooted['op']}, or "
            f"broadcast the result from rank {alike[0]}",
            step=step,
            cause="reduced-value-used-off-root",
            rank=differ[0],
            confidence=0.93,
            explains=(*explains, "samples-differ-from-one-process"),
        )
    return Finding(
        kind="ranks",
        severity="failure" if failed else "divergence",
        title=f"rank {differ[0]} loads other samples than one process for the same dataset indices"
        + (f" ({len(differ)} of {len(ranks)} ranks)" if len(differ) > 1 else ""),
        evidence=evidence,
        hint="what a rank loads must not depend on its rank: statistics, vocabularies or preprocessing computed "
        "from the rank's own shard give every rank another data set; compute them over the whole data set "
        "(all_reduce the sums) or once, then broadcast",
        step=step,
        cause="samples-differ-from-one-process",
        rank=differ[0],
        confidence=0.9,
        explains=explains,
    )


def _batches(share: dict[str, Any]) -> int:
    """Batches a step consumed from the loader of its last one (the loader it trained from)."""
    loaders = share.get("loaders") or []
    return loaders.count(loaders[-1]) if loaders else 0


def _trained_on(share: dict[str, Any]) -> int:
    """Samples of the batch a rank's step trained on: the last it consumed before the step."""
    indices = share.get("indices") or []
    return len(indices[-1] or []) if indices else 0


def _loss_not_a_mean(mine: dict[str, Any], shares: list[dict[str, Any]], sums: bool = False) -> str | None:
    """Gradients compare only where the loss is the mean over the batch: then one process's loss
    over the global batch is the ranks' mean. A loss divided by a batch size the job was told
    (the replay hands one process the global batch), or normalised over the batch (BatchNorm
    without SyncBatchNorm) is another function of the same samples. With ``sums`` (the job names
    its batch-size hyperparameter, so one process was told the global batch) a loss summed over
    the batch compares too: one process's is then the ranks' sum."""
    weights = [_trained_on(share) for share in shares]
    losses = [float(share["loss"]) for share in shares if isinstance(share.get("loss"), (int, float))]
    loss = mine.get("loss")
    if not isinstance(loss, (int, float)) or len(losses) != len(shares) or not sum(weights):
        return "no loss to compare"
    mean = sum(x * w for x, w in zip(losses, weights, strict=True)) / sum(weights)
    if math.isclose(loss, mean, rel_tol=LOSS_RTOL, abs_tol=ATOL):
        return None
    if sums and math.isclose(loss, sum(losses), rel_tol=LOSS_RTOL, abs_tol=ATOL):
        return None
    return (
        f"the loss of one process over the global batch ({loss:.6g}) is not the ranks' mean ({mean:.6g}): "
        "a loss summed or divided by a configured batch size, or statistics over the batch (BatchNorm)"
    )


def check_run(record: RunRecord, context: CheckContext) -> list[Finding]:
    replay = replay_of(record)
    if replay is None:
        return []
    ranks = {rank: _steps(events) for rank, events in sorted(record.rank_events().items())}
    mine = replay.rank_events().get(0, [])
    theirs, ours = ranks.get(0, {}), _steps(mine)
    names = _names(record)
    told_global_batch = bool(record.manifest.job.batch_size_hyperparameter)
    compared, left_out = 0, None
    for step in sorted(theirs):
        loaded = _loaded_otherwise(mine, step)
        if loaded is not None:
            sharded = _sharded_channels(record)
            if sharded:
                left_out = f"step {step} and after: each host loads its own data (channels {sharded} sharded by key)"
                break
            return [_samples_differ(record, replay, ranks, step, loaded)]
        if step not in ours:
            failed = f" (the job {replay.status} there)" if replay.status != "succeeded" else ""
            left_out = f"step {step} and after: the one process took no step {step} with a replayed batch{failed}"
            break
        left_out = _left_out(mine, step, ours[step])
        if left_out is not None:
            left_out = f"step {step} and after: {left_out}"
            break
        if _batches(ours[step]) != _batches(theirs[step]):
            left_out = (
                f"step {step} and after: the one process consumed {_batches(ours[step])} batches before its "
                f"optimizer step, rank 0 {_batches(theirs[step])}"
            )
            break
        shares = [steps.get(step, {}) for steps in ranks.values()]
        left_out = _loss_not_a_mean(ours[step], shares, sums=told_global_batch)
        if left_out is not None:
            left_out = f"step {step} and after: {left_out}{_batch_statistics(record)}"
            break
        a, b = ours[step].get("param_norms"), theirs[step].get("param_norms")
        if not a or not b or len(a) != len(b):
            left_out = f"step {step} and after: the gradients of {len(a or [])} and {len(b or [])} parameters"
            break
        for index, (single, distributed) in enumerate(zip(a, b, strict=True)):
            if not math.isclose(single, distributed, rel_tol=RTOL, abs_tol=ATOL):
                return [_differs(record, replay, ranks, ours, step, index, names, single, distributed)]
        compared += 1
    if compared == 0 and left_out is None:
        return []
    said = f"the first {compared} optimizer steps agree with one process drawing the same global batches"
    return [
        Finding(
            kind="metrics",
            severity="note",
            title=f"replay: {said}" if compared else "replay: nothing compared",
            evidence=[f"replayed on single: {replay.root.relative_to(record.root).as_posix()}"]
            + ([f"left out: {left_out}"] if left_out else []),
            cause="replay-compared",
        )
    ]


def _differs(
    record: RunRecord,
    replay: RunRecord,
    ranks: dict[int, dict[int, dict[str, Any]]],
    ours: dict[int, dict[str, Any]],
    step: int,
    index: int,
    names: list[str],
    single: float,
    distributed: float,
) -> Finding:
    name = names[index] if index < len(names) else f"parameter {index}"
    shares = {rank: steps.get(step, {}) for rank, steps in ranks.items()}
    samples = sum(_trained_on(s) for s in shares.values())
    losses = [float(s["loss"]) for s in shares.values() if isinstance(s.get("loss"), (int, float))]
    ratio = distributed / single if single else math.inf
    evidence = [
        f"step {step}, {name}: gradient norm {distributed:.6g} on {record.rung} (rank 0, after the reduction) and "
        f"{single:.6g} in one process: ratio {ratio:.4g}",
        f"the same {samples} samples in the same order, from rank 0's initial weights (its first optimizer's "
        f"parameters; {len(shares)} ranks)",
    ]
    if losses and isinstance(ours[step].get("loss"), (int, float)):
        mean = sum(losses) / len(losses)
        evidence.append(
            f"loss at step {step}: {ours[step]['loss']:.6g} in one process; the ranks' mean {mean:.6g}, "
            f"their sum {sum(losses):.6g}"
        )
    if step:
        evidence.append(f"steps 0 to {step - 1} agree")
    evidence.append(f"replayed on single: {replay.root.relative_to(record.root).as_posix()}")
    return Finding(
        kind="metrics",
        severity="failure" if record.status != "succeeded" else "divergence",
        title=f"the distributed update differs from one process doing the same work: at step {step}, the gradient of "
        f"{name} is {ratio:.3g} times the one process's",
        evidence=evidence,
        hint="the gradients every rank applies must be those of the loss over the global batch: let DDP average "
        "them (no all_reduce of your own on top, no sum without dividing by the world size), and reduce the loss "
        "by its mean over the local batch",
        step=step,
        cause="replay-differs",
        confidence=0.92,
        explains=("learning-differs", "weights-differ", "metric-divergence"),
    )


def replayable(record: RunRecord) -> bool:
    """Whether the ladder can replay ``record``: a distributed run whose rank 0 kept its initial
    weights and drew its first step's batch from a loader (the indices of one batch)."""
    if not (record.root / "ranks" / "rank-0.init.pt").is_file() or len(record.rank_logs()) < 2:
        return False
    events = record.iter_rank_events().get(0, iter(()))
    first = next((e for e in events if e.get("kind") == "replay_step"), None)
    indices = (first or {}).get("indices") or []
    return bool(indices) and isinstance(indices[-1], list)


def replay_job(record: RunRecord, job: Workload) -> JobSpec | None:
    """The job that replays ``record`` in one process (into :func:`replay_root`), or None where
    it cannot be replayed: a job of another workload, or a run without what a replay needs."""
    if not isinstance(job, JobSpec) or not replayable(record):
        return None
    return job.model_copy(update={"environment": {**job.environment, "HARNESS_REPLAY": str(record.root)}})


def replay_root(record: RunRecord) -> Path:
    return record.root / REPLAY_DIR
