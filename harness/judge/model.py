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

from collections import defaultdict
from typing import Any

from harness.judge.findings import ECHOES, Finding
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
    return []


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
