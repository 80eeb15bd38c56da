"""The model ledger within one run: what each rank handed its distribution wrapper.

When a model is wrapped (``DistributedDataParallel``, ``FullyShardedDataParallel``: accelerate,
Lightning and the Trainer all wrap through these) the probe records, per rank, every parameter
and buffer with its shape, dtype, device type and ``requires_grad`` (docs/run-record.md:
``model``). The members of one wrapper's process group must hold the same model; a rank that
built another one (a layer sized from its own shard, a layer frozen on one rank only) makes the
wrapper raise, hang or average gradients of different things. The finding names the first
parameter that differs, with both values, and explains what the wrapper did next.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from harness.judge.findings import ECHOES, Finding
from harness.judge.logs import timeline
from harness.judge.protocol import CheckContext
from harness.record.run_record import RunRecord

#: What a model that differs across ranks leads to in the wrapper and the collectives after it.
_CONSEQUENCES = (
    *ECHOES,
    "collective-mismatch",
    "collective-timeout",
    "peer-connection-lost",
    "parameter-drift",
    "unused-parameters",
)
_FIELDS = ("shape", "dtype", "device", "requires_grad")


#: Wrappers whose ranks each hold another part of the parameters (FSDP's flat shards; FSDP2 and
#: DTensor parameters say so themselves, in the ``params`` event's ``sharded``).
SHARDING_WRAPPERS = frozenset({"FullyShardedDataParallel"})


def shards_parameters(events: dict[int, list[dict[str, Any]]]) -> bool:
    """Whether the ranks hold different parts of the parameters: their digests, and the gradient
    norms each rank takes over its own part, differ across ranks and from one process by design."""
    return any(
        (e.get("kind") == "model" and e.get("wrapper") in SHARDING_WRAPPERS)
        or (e.get("kind") == "params" and e.get("sharded"))
        for evs in events.values()
        for e in evs
    )


def check_run(record: RunRecord, context: CheckContext) -> list[Finding]:
    wraps: dict[tuple[int, tuple[int, ...] | None], dict[int, dict[str, Any]]] = defaultdict(dict)
    for rank, events in record.rank_events().items():
        count: dict[tuple[int, ...] | None, int] = defaultdict(int)
        for event in events:
            if event.get("kind") != "model":
                continue
            group = tuple(event["group"]) if event.get("group") else None
            wraps[(count[group], group)][rank] = event
            count[group] += 1
    failed = record.status != "succeeded"
    for (_, group), by_rank in sorted(wraps.items(), key=lambda item: item[0][0]):
        if len({e.get("digest") for e in by_rank.values()}) > 1:
            return [_differs(by_rank, group, failed)]
    first = {
        rank: next((e for e in events if e.get("kind") == "first_step"), None)
        for rank, events in record.rank_events().items()
    }
    held = {rank: event for rank, event in sorted(first.items()) if event is not None}
    return [*_added_after_wrap(held, failed), *_optimizer_state(held, failed), *_reentrant_checkpoint(record)]


def _reentrant_checkpoint(record: RunRecord) -> list[Finding]:
    """DDP's "marked as ready twice" where the job recomputes activations in reentrant backward
    passes and the wrapper searches for unused parameters (or was told the graph is static):
    a combination DDP does not support, whatever the error's list of reasons begins with."""
    if record.status == "succeeded":
        return []
    reentrant = wrapped = None
    for events in record.rank_events().values():
        for event in events:
            if event.get("kind") == "activation_checkpoint" and event.get("reentrant"):
                reentrant = reentrant or event
            elif event.get("kind") == "model" and any((event.get("options") or {}).values()):
                wrapped = wrapped or event
    if reentrant is None or wrapped is None:
        return []
    said = next((m for m in timeline(record).matches if m.signature.id == "parameter-ready-twice"), None)
    if said is None:
        return []
    options = ", ".join(f"{k}=True" for k, v in (wrapped.get("options") or {}).items() if v)
    return [
        Finding(
            kind="ranks",
            severity="failure",
            title=f"activation checkpointing with use_reentrant=True ({reentrant.get('caller')}) under "
            f"DistributedDataParallel({options}): DDP saw a parameter's gradient twice in one backward pass",
            evidence=[
                f"checkpoint(..., use_reentrant=True) at {reentrant.get('caller')}",
                f"{wrapped.get('wrapper')}({options}) at {wrapped.get('caller')}",
                said.where(),
            ],
            hint="pass use_reentrant=False to torch.utils.checkpoint.checkpoint (the non-reentrant variant works "
            f"with {options}), or drop {options.split('=')[0]}",
            cause="reentrant-checkpoint-with-ddp",
            rank=said.rank,
            confidence=0.95,
            explains=("parameter-ready-twice", "python-exception", *ECHOES),
        )
    ]


#: What ranks that each train their own copy of some parameters lead to.
_DRIFT = ("parameter-drift", "replay-differs", "learning-differs", "weights-differ")


def _added_after_wrap(held: dict[int, dict[str, Any]], failed: bool) -> list[Finding]:
    """Parameters registered on the model after it was handed to DDP (``model.module.head = ...``)
    and trained: DDP reduces the gradients of the parameters it was given, so each rank trains
    its own copy of these on its own shard."""
    added = {rank: e for rank, e in held.items() if e.get("added_count")}
    if not added or len(held) < 2:  # one process has no copies to keep alike
        return []
    rank, event = next(iter(added.items()))
    names = [str(n) for n in event.get("added_after_wrap") or []]
    return [
        Finding(
            kind="ranks",
            severity="failure" if failed else "divergence",
            title=f"{event['added_count']} trained parameters were added to the model after it was handed to "
            f"DistributedDataParallel ({', '.join(names[:3])}{', ...' if event['added_count'] > 3 else ''}): DDP does "
            "not average their gradients, so each rank trains its own copy",
            evidence=[
                f"rank {r}: {e['added_count']} parameters not among those DDP was given, at its first optimizer step"
                for r, e in added.items()
            ][:8]
            + [f"added: {', '.join(names)}"],
            hint="build the whole model (heads included) before wrapping it in DistributedDataParallel, or wrap "
            "again after adding parameters",
            cause="parameters-added-after-wrap",
            rank=rank,
            confidence=0.92,
            explains=_DRIFT,
        )
    ]


def _optimizer_state(held: dict[int, dict[str, Any]], failed: bool) -> list[Finding]:
    """The optimizer's state at each rank's first step (which steps its entries count): a
    checkpoint's state loaded on some ranks only starts their optimizers elsewhere (Adam's
    moments, its step count), and the same averaged gradient moves each rank's weights apart."""
    if len(held) < 2:
        return []
    states = {rank: (bool(e.get("state_entries")), tuple(e.get("state_steps") or ())) for rank, e in held.items()}
    if len(set(states.values())) < 2:
        return []
    usual = Counter(states.values()).most_common(1)[0][0]
    odd = [rank for rank, state in states.items() if state != usual]

    def said(rank: int) -> str:
        event = held[rank]
        if not event.get("state_entries"):
            return f"rank {rank}: {event.get('optimizer')} held no state"
        steps = ", ".join(f"{s:g}" for s in event.get("state_steps") or []) or "none"
        return (
            f"rank {rank}: {event.get('optimizer')} held state for {event['state_entries']} parameters (step {steps})"
        )

    return [
        Finding(
            kind="ranks",
            severity="failure" if failed else "divergence",
            title="the ranks' optimizers started from different states: "
            + "; ".join(said(rank) for rank in [*odd[:1], next(r for r in states if r not in odd)]),
            evidence=[said(rank) for rank in states][:16],
            hint="load the optimizer's state on every rank (each from the checkpoint, with map_location), not only "
            "on the rank that reads the checkpoint; DDP broadcasts the weights at wrap time, never the optimizer",
            cause="optimizer-state-differs-across-ranks",
            rank=odd[0],
            confidence=0.9,
            explains=_DRIFT,
        )
    ]


def _differs(by_rank: dict[int, dict[str, Any]], group: tuple[int, ...] | None, failed: bool) -> Finding:
    digests: dict[str, list[int]] = defaultdict(list)
    for rank, event in sorted(by_rank.items()):
        digests[str(event.get("digest"))].append(rank)
    reference = min(by_rank)
    odd = min(rank for ranks in digests.values() if reference not in ranks for rank in ranks)
    first, rest = _first_difference(by_rank[reference], by_rank[odd], reference, odd)
    wrapper = by_rank[reference].get("wrapper", "the wrapper")
    where = by_rank[odd].get("caller")
    evidence = [
        f"{first}",
        *rest,
        *(
            f"{'ranks' if len(ranks) > 1 else 'rank'} {', '.join(map(str, ranks))}: model digest {digest}"
            for digest, ranks in digests.items()
        ),
    ]
    return Finding(
        kind="ranks",
        severity="failure" if failed else "divergence",
        title=f"the model differs across ranks when wrapped in {wrapper}"
        + (f" ({where})" if where else "")
        + f": {first}",
        evidence=evidence,
        hint="build the same model on every rank: sizes from the whole dataset or the config (never a rank's own "
        "shard), the same dtype and the same frozen layers everywhere before wrapping",
        cause="model-differs",
        confidence=0.95,
        explains=_CONSEQUENCES,
    )


def _first_difference(a: dict[str, Any], b: dict[str, Any], rank_a: int, rank_b: int) -> tuple[str, list[str]]:
    """The first parameter or buffer that differs between two ranks' models, with both values,
    and how many more do."""
    left, right = a.get("entries") or [], b.get("entries") or []
    differences = []
    for index, (x, y) in enumerate(zip(left, right, strict=False)):
        if x == y:
            continue
        if x[0] != y[0]:
            differences.append(f"entry {index} is {x[0]!r} on rank {rank_a} and {y[0]!r} on rank {rank_b}")
            continue
        kind = "buffer" if x[4] == "buffer" else "parameter"
        for position, name in enumerate(_FIELDS, start=1):
            if x[position] != y[position]:
                differences.append(
                    f"{kind} {index} ({x[0]}) {name} is {y[position]} on rank {rank_b} "
                    f"and {x[position]} on rank {rank_a}"
                )
                break
    if len(left) != len(right) or a.get("count") != b.get("count"):
        differences.append(
            f"rank {rank_a} has {a.get('count')} parameters and buffers, rank {rank_b} has {b.get('count')}"
        )
    if not differences:
        return f"the models of ranks {rank_a} and {rank_b} differ beyond the entries recorded", []
    more = [f"{len(differences) - 1} more entries differ"] if len(differences) > 1 else []
    return differences[0], [*differences[1:3], *more]
