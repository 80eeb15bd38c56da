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

import math
from collections import Counter, defaultdict
from typing import Any

from harness.judge.findings import ECHOES, Finding, ranks_named
from harness.judge.logs import timeline
from harness.judge.protocol import CheckContext
from harness.record.run_record import RunRecord, loss_ledger_steps

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
    by_rank_events = record.rank_events()  # a copy per call: read once
    for rank, events in by_rank_events.items():
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
        for rank, events in by_rank_events.items()
    }
    held = {rank: event for rank, event in sorted(first.items()) if event is not None}
    return [
        *_unregistered_differ(wraps, failed),
        *_group_not_world(wraps, by_rank_events),
        *_added_after_wrap(held, failed),
        *_trainable_after_wrap(by_rank_events, failed),
        *_outside_wrappers(held, failed),
        *_partition_order(held, failed),
        *_optimizer_state(held, failed),
        *_loss_differs(held, failed),
        *_comm_hook_overflow(by_rank_events, failed),
        *_reentrant_checkpoint(record),
    ]


def _unregistered_differ(
    wraps: dict[tuple[int, tuple[int, ...] | None], dict[int, dict[str, Any]]], failed: bool
) -> list[Finding]:
    """Tensors the model keeps as plain attributes, neither parameter nor buffer, that differ
    across the ranks of one wrapper: the wrapper broadcasts parameters and buffers only, so each
    rank computes another function and the averaged gradients mix them."""
    for _, by_rank in sorted(wraps.items(), key=lambda item: item[0][0]):
        held = {rank: e["unregistered"] for rank, e in by_rank.items() if e.get("unregistered")}
        if len(held) < 2 or len({h.get("digest") for h in held.values()}) < 2:
            continue
        classes: dict[str, list[int]] = defaultdict(list)
        for rank, tensors in sorted(held.items()):
            classes[str(tensors.get("digest"))].append(rank)
        names = [str(n) for n in next(iter(held.values())).get("names") or []]
        where = next(iter(by_rank.values())).get("caller")
        return [
            Finding(
                kind="ranks",
                severity="failure" if failed else "divergence",
                title=f"tensors the model keeps outside its parameters and buffers ({', '.join(names[:3])}) differ "
                f"across ranks when wrapped in {next(iter(by_rank.values())).get('wrapper')}"
                + (f" ({where})" if where else "")
                + ": the wrapper never synchronises them, so each rank computes another function",
                evidence=[
                    f"{ranks_named(ranks)}: digest {digest} of {', '.join(names)}" for digest, ranks in classes.items()
                ],
                hint="register such tensors as buffers (self.register_buffer(name, tensor), persistent so that "
                "the checkpoint keeps them too) so that the wrapper broadcasts them from rank 0, or make them from a "
                "generator seeded alike on every rank",
                cause="unregistered-tensor-differs-across-ranks",
                confidence=0.9,
                explains=_DRIFT,
            )
        ]
    return []


def _group_not_world(
    wraps: dict[tuple[int, tuple[int, ...] | None], dict[int, dict[str, Any]]],
    events: dict[int, list[dict[str, Any]]],
) -> list[Finding]:
    """Replicas wrapped over a process group smaller than the job, whose parameters then split
    exactly along those groups: each group averages its own gradients and trains its own model."""
    groups = {
        rank: tuple(event["group"])
        for (_, group), by_rank in wraps.items()
        if group is not None
        for rank, event in by_rank.items()
        if event.get("wrapper") not in SHARDING_WRAPPERS
    }
    world = sorted(events)
    if len(world) < 2 or set(groups) != set(world) or all(len(g) == len(world) for g in groups.values()):
        return []
    params = {rank: {e["step"]: e["digest"] for e in evs if e.get("kind") == "params"} for rank, evs in events.items()}
    common = sorted(set.intersection(*(set(p) for p in params.values())))
    for step in common:
        by_digest: dict[str, set[int]] = defaultdict(set)
        for rank in world:
            by_digest[params[rank][step]].add(rank)
        if len(by_digest) < 2:
            continue
        if {frozenset(ranks) for ranks in by_digest.values()} != {frozenset(g) for g in groups.values()}:
            return []
        wrapper = next(e for by_rank in wraps.values() for e in by_rank.values())
        where = wrapper.get("caller")
        return [
            Finding(
                kind="ranks",
                severity="divergence",
                title=f"{wrapper.get('wrapper')} was given a process group of {len(groups[world[0]])} of the "
                f"{len(world)} ranks" + (f" ({where})" if where else "") + ": each group averages its own "
                f"gradients and trains its own model, which split from step {step}",
                evidence=[
                    *(
                        f"ranks {', '.join(map(str, sorted(g)))}: one wrapper group"
                        for g in sorted(set(groups.values()))
                    ),
                    *(
                        f"ranks {', '.join(map(str, sorted(ranks)))}: parameters digest {digest} at step {step}"
                        for digest, ranks in by_digest.items()
                    ),
                ],
                hint="wrap the model over the whole job (leave process_group unset) where every rank holds a replica; "
                "per-node groups are for collectives such as SyncBatchNorm's, not for the gradient average",
                step=step,
                cause="wrapper-group-not-world",
                confidence=0.9,
                explains=_DRIFT,
            )
        ]
    return []


def _outside_wrappers(held: dict[int, dict[str, Any]], failed: bool) -> list[Finding]:
    """An optimizer that steps tensors no wrapper holds and no backward reaches: made before FSDP
    flattened the model into its own parameters, it holds the tensors FSDP replaced."""
    outside = {rank: e for rank, e in held.items() if e.get("outside_wrappers")}
    if not outside:
        return []
    rank, event = next(iter(outside.items()))
    shapes = ", ".join("x".join(map(str, s)) or "scalar" for s in event.get("outside_shapes") or [])
    return [
        Finding(
            kind="ranks",
            severity="failure" if failed else "divergence",
            title=f"the optimizer steps {event['outside_wrappers']} of its {event.get('stepped')} tensors that no "
            "distribution wrapper holds and no backward reached: the model it was meant to train is never updated",
            evidence=[
                f"rank {r}: {e['outside_wrappers']} of {e.get('stepped')} tensors of {e.get('optimizer')} outside "
                "every DDP/FSDP wrapper, with no gradient, at its first step"
                for r, e in outside.items()
            ][:8]
            + ([f"shapes: {shapes}"] if shapes else []),
            hint="make the optimizer after wrapping the model, from the wrapper's parameters "
            "(FSDP replaces the module's parameters with its own flat ones): model = FSDP(model); "
            "optimizer = AdamW(model.parameters())",
            cause="optimizer-params-not-in-model",
            rank=rank,
            confidence=0.93,
            explains=(*_DRIFT, "ranks-took-no-steps"),
        )
    ]


def _partition_order(held: dict[int, dict[str, Any]], failed: bool) -> list[Finding]:
    """An optimizer that partitions its parameters across ranks by the order it holds them in
    (``ZeroRedundancyOptimizer``), given them in another order on some rank (param groups built
    from a ``set``, whose order differs per process): each rank updates and broadcasts a partition
    its peers think is another, so tensors overwrite each other."""
    orders = {rank: tuple(e["partitioned_order"]) for rank, e in held.items() if e.get("partitioned_order")}
    if len(orders) < 2 or len(set(orders.values())) < 2:
        return []
    reference = min(orders)
    odd = next(rank for rank, order in orders.items() if order != orders[reference])
    ours, theirs = orders[reference], orders[odd]
    position = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), len(ours))
    return [
        Finding(
            kind="ranks",
            severity="failure" if failed else "divergence",
            title=f"{held[odd].get('optimizer')} partitions the parameters by the order it holds them in, and the "
            f"ranks hold them in other orders: parameter {position} is "
            f"{theirs[position] if position < len(theirs) else 'absent'} on rank {odd} and "
            f"{ours[position] if position < len(ours) else 'absent'} on rank {reference}",
            evidence=[
                f"rank {rank}: " + ", ".join(order[:4]) + (", ..." if len(order) > 4 else "")
                for rank, order in sorted(orders.items())
            ][:8],
            hint="build the parameter groups in a deterministic order (a list from model.named_parameters(), never "
            "a set), the same on every rank",
            cause="optimizer-param-order-differs-across-ranks",
            rank=odd,
            confidence=0.92,
            explains=_DRIFT,
        )
    ]


def _loss_differs(held: dict[int, dict[str, Any]], failed: bool) -> list[Finding]:
    """Loss modules set up differently on the ranks (a ``pos_weight`` or class ``weight`` counted
    on the rank's own shard): DDP then averages the gradients of different objectives."""
    losses = {rank: e["losses"] for rank, e in held.items() if isinstance(e.get("losses"), list)}
    if len(losses) < 2 or len({tuple(x.get("digest") for x in v) for v in losses.values()}) < 2:
        return []
    reference = min(losses)
    for index, ours in enumerate(losses[reference]):
        differ = {
            rank: theirs[index]
            for rank, theirs in losses.items()
            if index < len(theirs) and theirs[index].get("digest") != ours.get("digest")
        }
        if not differ:
            continue
        settings = {rank: theirs[index].get("shown") or {} for rank, theirs in losses.items() if index < len(theirs)}
        names = [k for k in ours.get("shown") or {} if any(s.get(k) != ours["shown"][k] for s in settings.values())]
        return [
            Finding(
                kind="ranks",
                severity="failure" if failed else "divergence",
                title=f"the ranks' {ours.get('type')} differ ({', '.join(names) or 'its tensors'}): each rank "
                "minimises another objective and the wrapper averages their gradients",
                evidence=[
                    f"rank {rank}: {ours.get('type')}("
                    + ", ".join(f"{k}={shown.get(k)}" for k in names or list(shown)[:3])
                    + ")"
                    for rank, shown in sorted(settings.items())
                ][:8],
                hint="compute loss weights (pos_weight, class weights) from the whole dataset, or all_reduce the "
                "counts before making the loss, so that every rank minimises the same loss",
                cause="loss-differs-across-ranks",
                rank=min(differ),
                confidence=0.9,
                explains=_DRIFT,
            )
        ]
    return []


def _comm_hook_overflow(events: dict[int, list[dict[str, Any]]], failed: bool) -> list[Finding]:
    """A communication hook that reduces gradients in float16, where the reduced gradient is not
    finite although the loss it came from is: the gradients overflowed float16's range (65504)
    in the hook, not in the model."""
    hooked = {rank: e for rank, evs in events.items() for e in evs if e.get("kind") == "comm_hook"}
    hook = next(iter(hooked.values()), None)
    if hook is None or not any(word in hook.get("hook", "").lower() for word in ("fp16", "half")):
        return []
    for rank, evs in sorted(events.items()):
        for step in (step for event in evs for step in loss_ledger_steps(event)):
            loss, norm = step["loss"], step["grad_norm"]
            if isinstance(loss, float) and math.isfinite(loss) and isinstance(norm, float) and not math.isfinite(norm):
                return [
                    Finding(
                        kind="ranks",
                        severity="failure" if failed else "divergence",
                        title=f"gradients overflow float16 in the communication hook {hook.get('hook')} "
                        f"({hook.get('caller')}): from step {step['step']} the reduced gradient is not finite "
                        "although the loss is",
                        evidence=[
                            f"rank {rank}, step {step['step']}: loss {loss:.6g}, gradient norm after the reduction "
                            f"{norm}",
                            f"{hook.get('hook')} registered at {hook.get('caller')} on {len(hooked)} ranks",
                        ],
                        hint="gradients beyond 65504 do not fit float16: scale the targets or the loss so gradients "
                        "stay in range, or use bf16_compress_hook or no compression hook",
                        step=int(step["step"]),
                        cause="comm-hook-fp16-overflow",
                        rank=rank,
                        confidence=0.93,
                        explains=(*_DRIFT, "weights-non-finite"),
                    )
                ]
    return []


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


def _trainable_after_wrap(events: dict[int, list[dict[str, Any]]], failed: bool) -> list[Finding]:
    """Parameters that were frozen when DDP wrapped their model and trained later (a backbone
    unfrozen at some epoch): DDP registered no reduction for them when it was made, so each rank
    steps its copy with its own gradient, and no error says so."""
    seen = {
        rank: next((e for e in evs if e.get("kind") == "trainable_after_wrap"), None) for rank, evs in events.items()
    }
    unfrozen = {rank: e for rank, e in sorted(seen.items()) if e is not None}
    if not unfrozen or len(events) < 2:  # one process has no copies to keep alike
        return []
    rank, event = next(iter(unfrozen.items()))
    names = [str(n) for n in event.get("names") or []]
    count = int(event.get("count") or len(names))
    return [
        Finding(
            kind="ranks",
            severity="failure" if failed else "divergence",
            title=f"{count} parameters frozen when DistributedDataParallel wrapped the model were trained from "
            f"optimizer step {event.get('step')} ({', '.join(names[:3])}{', ...' if count > 3 else ''}): DDP "
            "averages the gradients only of the parameters that required grad when it was made, so each rank "
            "trains its own copy of these",
            evidence=[f"{ranks_named(list(unfrozen))}: trainable by step {event.get('step')}: {', '.join(names)}"],
            hint="wrap the model in DistributedDataParallel again after changing requires_grad (unfreezing a "
            "backbone), or make those parameters trainable before wrapping and keep them out of the optimizer "
            "until they are to train",
            step=event.get("step"),
            cause="trainable-after-wrap",
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
        *(f"{ranks_named(ranks)}: model digest {digest}" for digest, ranks in digests.items()),
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
