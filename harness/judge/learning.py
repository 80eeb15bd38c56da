"""The loss ledger across the step from fewer processes to more: does the distributed run learn
as the run it was scaled from?

The probe records, per rank and optimizer step, the loss ``backward()`` ran on, the samples
consumed, the gradient norm after the distributed reduction and the learning rate
(docs/run-record.md: ``steps``), so every job has curves, ``metric_definitions`` or not. A
distributed step is the samples-weighted mean of its ranks' losses over the global batch.

* Where both runs take the same global batch per step (a ``DistributedSampler`` hands the ranks
  the slices of one permutation, so they draw the very batches one process draws), the first
  steps must agree up to float rounding: the first step whose loss or gradient norm departs is
  the finding, with both values. Where the first step's losses differ (randomness that is not
  aligned: dropout, augmentation; or a loss of another scale), only a gap far beyond such noise
  counts: the median ratio of gradient norms or losses over the first five steps outside
  [0.4, 2.5].
* Where the global batch grew (each rank takes the batch one process took), averaging over more
  samples can only shrink the gradient's noise: a gradient norm 2.5 times the baseline's or more
  means the updates were scaled (gradients summed, not averaged).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from harness.judge.findings import Finding
from harness.judge.model import shards_parameters
from harness.judge.protocol import CheckContext
from harness.record.run_record import RunRecord, loss_ledger_steps

#: Steps compared: the ones float rounding cannot yet have carried apart.
_EXACT_STEPS = 10
_EXACT_RTOL = 1e-3
#: Steps whose ratios are compared where the runs are not aligned: the first few, before two
#: runs that learn at different rates have drifted to different places.
_TREND_STEPS = 5


@dataclass(frozen=True)
class _Step:
    loss: float | None
    samples: int
    grad_norm: float | None
    lr: float | None


def compare(baseline: RunRecord, candidate: RunRecord, context: CheckContext) -> list[Finding]:
    base, base_world = _global_steps(baseline)
    cand, cand_world = _global_steps(candidate)
    if base and not cand:
        return _no_steps(baseline, candidate, len(base))
    if not base or not cand or cand_world <= base_world:
        return []
    made = _schedules(baseline), _schedules(candidate)
    schedule = _schedule_length(baseline, candidate, made) or _schedule_end(baseline, candidate, made, base, cand)
    return [*schedule, *_learning(baseline, candidate, base, cand)]


def _no_steps(baseline: RunRecord, candidate: RunRecord, steps: int) -> list[Finding]:
    """A distributed run that ended well and whose ranks took no optimizer step, where one
    process took some: nothing was trained (a loader each rank finds empty: a per-rank batch
    larger than its shard with ``drop_last``), and the weights it saves are the initial ones."""
    ranks = candidate.rank_events()
    if candidate.status != "succeeded" or len(ranks) < 2:
        return []
    passes = [e for events in ranks.values() for e in events if e.get("kind") == "data_epoch"]
    drawn = sum(int(e.get("batches") or 0) for e in passes)
    return [
        Finding(
            kind="metrics",
            severity="divergence",
            title=f"no rank took an optimizer step on {candidate.rung}; {baseline.rung} took {steps}",
            evidence=[
                f"{baseline.rung}: {steps} optimizer steps",
                f"{candidate.rung}: {len(ranks)} ranks, none stepped, {drawn} batches drawn",
            ],
            hint="every rank must draw batches: a per-rank batch size larger than the rank's shard with "
            "drop_last=True gives an empty loader (divide the global batch by the world size), and a loop bounded "
            "by a step count computed for one process may end before it starts",
            cause="ranks-took-no-steps",
            confidence=0.9,
            explains=("weights-differ", "metric-divergence", "metric-length"),
        )
    ]


def _learning(baseline: RunRecord, candidate: RunRecord, base: list[_Step], cand: list[_Step]) -> list[Finding]:
    steps = min(len(base), len(cand))
    equal_batch = all(base[i].samples == cand[i].samples and base[i].samples for i in range(min(steps, 3)))
    if equal_batch:
        finding = _exact(base, cand, steps, baseline.rung, candidate.rung)
        if finding is not None:
            return [finding]
        return _trend(base, cand, steps, baseline.rung, candidate.rung, lower=0.4)
    grew = all(cand[i].samples > base[i].samples > 0 for i in range(min(steps, 3)))
    return _trend(base, cand, steps, baseline.rung, candidate.rung, lower=None) if grew else []


#: Schedules whose rate follows the steps taken alone (not a metric, as ``ReduceLROnPlateau``).
_STEP_DRIVEN = frozenset(
    (
        "LambdaLR",
        "MultiplicativeLR",
        "StepLR",
        "MultiStepLR",
        "ConstantLR",
        "LinearLR",
        "ExponentialLR",
        "SequentialLR",
        "PolynomialLR",
        "CosineAnnealingLR",
        "ChainedScheduler",
        "CyclicLR",
        "CosineAnnealingWarmRestarts",
        "OneCycleLR",
    )
)
_SCHEDULE_HINT = (
    "size the schedule from the steps each rank takes (len(train_loader) after the DistributedSampler, divided "
    "by the accumulation steps, times the epochs), not from the dataset's length and the one-process batch"
)
_SCHEDULE_EXPLAINS = ("learning-differs", "weights-differ", "metric-divergence", "python-exception", "job-failed")


def _schedules(record: RunRecord) -> list[list[Any]]:
    """Rank 0's schedules as the job made them: [class, attribute, length or None, times stepped]."""
    events = record.rank_events().get(0) or []
    last = next((e for e in reversed(events) if e.get("kind") == "schedules"), None)
    return [list(m) for m in (last or {}).get("made") or [] if isinstance(m, list) and len(m) == 4]


def _schedule_length(baseline: RunRecord, candidate: RunRecord, made: tuple[list[list[Any]], ...]) -> list[Finding]:
    """A schedule made for a number of steps: the share of it each run stepped through. One
    process steps through its schedule as the job sized it; where the ranks step through another
    share of theirs (or past its end, which OneCycleLR refuses), the schedule was sized from
    something that does not shrink as the ranks' loaders do."""
    for (name, attribute, base_length, base_steps), (other, _, length, steps) in zip(*made, strict=False):
        if name != other or not base_length or not length:
            continue
        base_share, share = base_steps / base_length, steps / length
        if candidate.status != "succeeded":
            departs = steps > length and base_steps <= base_length  # stepped past its end
        else:
            departs = abs(share - base_share) > 0.05 * max(share, base_share)
        if not departs:
            continue
        return [
            Finding(
                kind="metrics",
                severity="failure" if candidate.status != "succeeded" else "divergence",
                title=f"the learning-rate schedule ({name}, {attribute}={length}) was stepped {steps} times on "
                f"{candidate.rung}: {share:.0%} of what it was made for; on {baseline.rung} {base_steps} of "
                f"{base_length} ({base_share:.0%})",
                evidence=[
                    f"{baseline.rung}: {name}({attribute}={base_length}), stepped {base_steps} times",
                    f"{candidate.rung} (rank 0): {name}({attribute}={length}), stepped {steps} times"
                    + (f" before the job {candidate.status}" if candidate.status != "succeeded" else ""),
                ],
                hint=_SCHEDULE_HINT,
                cause="lr-schedule-length-differs",
                confidence=0.9,
                explains=_SCHEDULE_EXPLAINS,
            )
        ]
    return []


def _schedule_end(
    baseline: RunRecord,
    candidate: RunRecord,
    made: tuple[list[list[Any]], ...],
    base: list[_Step],
    cand: list[_Step],
) -> list[Finding]:
    """Where a schedule hides its length (a ``LambdaLR`` of the job's own): the learning rate at
    the end of each run, as a share of its peak. A schedule that anneals in one process and
    stops short on the ranks ends elsewhere; warm-up and plateaus that end at the peak, and
    schedules driven by a metric, are not compared."""
    names = {m[0] for schedules in made for m in schedules}
    if not names or not names <= _STEP_DRIVEN or baseline.status != "succeeded" or candidate.status != "succeeded":
        return []
    rates = [[s.lr for s in steps if s.lr is not None] for steps in (base, cand)]
    if min(len(r) for r in rates) < 4 or min(max(r) for r in rates) <= 0:
        return []
    (base_end, base_peak), (end, peak) = ((r[-1], max(r)) for r in rates)
    if base_end / base_peak > 0.5 or end / peak - base_end / base_peak <= 0.25:
        return []
    return [
        Finding(
            kind="metrics",
            severity="divergence",
            title=f"the learning rate ends at {end / peak:.0%} of its peak on {candidate.rung} and at "
            f"{base_end / base_peak:.0%} on {baseline.rung}: the schedule ({', '.join(sorted(names))}) covers another "
            "share of the ranks' training",
            evidence=[
                f"{baseline.rung}: {len(rates[0])} steps, learning rate peak {base_peak:.6g}, last {base_end:.6g}",
                f"{candidate.rung} (rank 0): {len(rates[1])} steps, peak {peak:.6g}, last {end:.6g}",
            ],
            hint=_SCHEDULE_HINT,
            cause="lr-schedule-length-differs",
            confidence=0.8,
            explains=_SCHEDULE_EXPLAINS,
        )
    ]


def _global_steps(record: RunRecord) -> tuple[list[_Step], int]:
    """The run's optimizer steps over the global batch, and how many ranks took them."""
    per_rank: dict[int, list[dict[str, Any]]] = {}
    for rank, events in record.rank_events().items():
        steps = [step for e in events for step in loss_ledger_steps(e)]
        if steps:
            per_rank[rank] = steps
    if not per_rank:
        return [], 0
    count = min(len(s) for s in per_rank.values())
    own_part = shards_parameters(record.rank_events())  # each rank's norm is of its own shard
    merged = []
    for index in range(count):
        events = [steps[index] for steps in per_rank.values()]
        samples = sum(int(e.get("samples") or 0) for e in events)
        losses = [(_number(e.get("loss")), int(e.get("samples") or 0)) for e in events]
        loss: float | None = None
        values = [(value, n) for value, n in losses if value is not None]
        if len(values) == len(losses):
            weight = sum(n for _, n in values)
            loss = sum(v * n for v, n in values) / weight if weight else statistics.fmean(v for v, _ in values)
        first = per_rank[min(per_rank)][index]
        norm = None if own_part else _number(first.get("grad_norm"))
        merged.append(_Step(loss, samples, norm, _number(first.get("lr"))))
    return merged, len(per_rank)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return True
    return abs(a - b) <= 1e-6 + _EXACT_RTOL * abs(a)


def _exact(base: list[_Step], cand: list[_Step], steps: int, below: str, rung: str) -> Finding | None:
    """The same global batches from the same weights: the first step that departs."""
    if not (base[0].loss is not None and cand[0].loss is not None and _close(base[0].loss, cand[0].loss)):
        return None  # not aligned: randomness the two runs do not share
    for index in range(min(steps, _EXACT_STEPS)):
        b, c = base[index], cand[index]
        if _close(b.loss, c.loss) and _close(b.grad_norm, c.grad_norm) and _close(b.lr, c.lr):
            continue
        return _finding(base, cand, index, below, rung, exact=True)
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return b / a if a and b is not None and a > 0 else None


def _trend(
    base: list[_Step], cand: list[_Step], steps: int, below: str, rung: str, lower: float | None
) -> list[Finding]:
    """Medians of the ratios over the first steps: far outside what noise gives."""
    window = range(min(steps, _TREND_STEPS))
    grads = [r for i in window if (r := _ratio(base[i].grad_norm, cand[i].grad_norm)) is not None]
    losses = [r for i in window if (r := _ratio(base[i].loss, cand[i].loss)) is not None]
    if len(grads) < 3:
        return []
    grad = statistics.median(grads)
    loss = statistics.median(losses) if losses else 1.0
    departs = grad >= 2.5 or (lower is not None and (grad <= lower or not 0.4 <= loss <= 2.5))
    if not departs:
        return []
    index = next(
        (i for i in window if (r := _ratio(base[i].grad_norm, cand[i].grad_norm)) is not None and not 0.4 < r < 2.5),
        0,
    )
    return [_finding(base, cand, index, below, rung, exact=False, medians=(grad, loss))]


def _finding(
    base: list[_Step],
    cand: list[_Step],
    index: int,
    below: str,
    rung: str,
    exact: bool,
    medians: tuple[float, float] | None = None,
) -> Finding:
    b, c = base[index], cand[index]
    what = []
    for name, x, y in (
        ("loss", b.loss, c.loss),
        ("gradient norm", b.grad_norm, c.grad_norm),
        ("learning rate", b.lr, c.lr),
    ):
        if x is not None and y is not None and not _close(x, y):
            what.append(f"{name} {y:.6g} on {rung}, {x:.6g} on {below}" + (f" (x{y / x:.3g})" if x else ""))
    evidence = [f"step {index}: {line}" for line in what]
    evidence.append(
        f"samples per step: {c.samples} on {rung}, {b.samples} on {below}"
        + (" (the same global batches)" if exact else "")
    )
    if medians is not None:
        evidence.append(
            f"over the first steps, median ratio {rung}/{below}: gradient norm {medians[0]:.3g}, loss {medians[1]:.3g}"
        )
    return Finding(
        kind="metrics",
        severity="divergence",
        title=f"{rung} learns differently from {below}"
        + (f" from step {index}: {what[0]}" if what else f" from step {index}"),
        evidence=evidence,
        hint="a distributed step must apply the update one process applies to the same global batch: average "
        "gradients over ranks once (DDP does; do not all-reduce them again, or sum without dividing), reduce the "
        "loss by its mean, and scale the learning rate only with the global batch",
        step=index,
        cause="learning-differs",
        explains=("weights-differ", "metric-divergence", "metric-length", "checkpoint-shapes"),
        confidence=0.75 if exact else 0.6,
    )
