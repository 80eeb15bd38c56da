"""The data ledger within one run: which samples each rank drew, per loader and epoch.

The probe records, for every ``DataLoader`` pass on every rank, the dataset indices its sampler
handed out (an exact bitmap for map-style datasets, content digests for iterable ones), the order
(a digest) and the batches (docs/run-record.md: ``epoch_start``, ``batch``, ``data_epoch``). From
these, for the loaders the job trains on (an optimizer stepped during the pass):

* ranks that draw different numbers of batches in one epoch (``uneven-batches``): the cause of
  the collective mismatch and the hang that follow, which it explains. The ranks behind must have
  exhausted their sampler: a rank that crashed or hung mid-epoch drew fewer for another reason;
* shards that overlap or leave samples unseen (``data-overlap``, ``data-unseen``), beyond what a
  sampler's padding or ``drop_last`` accounts for; shards identical on every rank are
  ``data-not-sharded`` (:mod:`harness.judge.ranks`, from the batches);
* an order that repeats every epoch where the sampler shuffles (``order-repeats``).

Samplers that draw with replacement overlap by design and are left out; so are loaders that no
optimizer step followed (evaluation on every rank is legitimate).
"""

from __future__ import annotations

import base64
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from harness.judge.findings import ECHOES, Finding, ranks_named
from harness.judge.protocol import CheckContext
from harness.record.run_record import RunRecord

#: Causes a rank's extra batches lead to: its collectives no longer pair with its peers'.
_UNEVEN_CONSEQUENCES = (
    *ECHOES,
    "collective-mismatch",
    "p2p-mismatch",
    "collective-timeout",
    "peer-connection-lost",
    "parameter-drift",
)


@dataclass
class LoaderPass:
    """One rank's pass over one loader (one epoch), from its events."""

    rank: int
    site: str
    epoch: int
    info: dict[str, Any] = field(default_factory=dict)
    batches: int = 0
    steps: int = 0
    first_step: int | None = None
    closed: dict[str, Any] | None = None
    #: The collective the rank issued right after each batch (1-based batch number -> event).
    after_batch: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def end(self) -> dict[str, Any]:
        """The pass's ``data_epoch`` event; empty where the rank never closed it."""
        return self.closed or {}


def check_run(record: RunRecord, context: CheckContext) -> list[Finding]:
    drawn = passes(record.rank_events())
    if not drawn:
        return _unobserved(record)
    world = len({p.rank for p in drawn})
    failed = record.status != "succeeded"
    findings: list[Finding] = []
    by_epoch: dict[tuple[str, int], list[LoaderPass]] = defaultdict(list)
    for one in drawn:
        by_epoch[(one.site, one.epoch)].append(one)
    training_sites = {p.site for p in drawn if p.steps > 0}
    for (site, epoch), group in sorted(by_epoch.items(), key=lambda item: (item[0][1], item[0][0])):
        if site not in training_sites or len(group) < 2:
            continue
        first = _epochs_differ(site, epoch, group, failed) or _uneven(site, epoch, group, failed)
        if first is not None:
            findings.append(first)
            break  # later epochs of a run whose collectives have shifted say nothing more
    for site in sorted(training_sites):
        findings += _coverage(site, [g for (s, _), g in sorted(by_epoch.items()) if s == site], world)
        repeated = _order_repeats(site, [g for (s, _), g in sorted(by_epoch.items()) if s == site])
        if repeated is not None:
            findings.append(repeated)
    return findings


def _epochs_differ(site: str, epoch: int, group: list[LoaderPass], failed: bool) -> Finding | None:
    """The epoch each rank's sampler was told (``set_epoch``) for this pass: ranks that disagree
    draw their shards of different permutations (overlapping, leaving samples out) and, where a
    rank resumed at a later epoch, run fewer passes than their peers."""
    said_epochs = {p.rank: p.info.get("sampler_epoch") for p in group}
    told = {rank: value for rank, value in said_epochs.items() if isinstance(value, int)}
    if len(told) < len(said_epochs) or len(set(told.values())) < 2:
        return None
    by_epoch: dict[int, list[int]] = defaultdict(list)
    for rank, value in sorted(told.items()):
        by_epoch[value].append(rank)
    usual = max(by_epoch.items(), key=lambda item: (len(item[1]), -item[0]))[0]
    odd = sorted(r for value, ranks in by_epoch.items() if value != usual for r in ranks)
    said = "; ".join(f"{ranks_named(ranks)} at epoch {value}" for value, ranks in sorted(by_epoch.items()))
    return Finding(
        kind="data",
        severity="failure" if failed else "divergence",
        title=f"the ranks' samplers were at different epochs in pass {epoch + 1} of {site}: {said}",
        evidence=[f"rank {r}: set_epoch({told[r]}) before pass {epoch + 1}" for r in sorted(told)][:16],
        hint="every rank must call sampler.set_epoch with the same epoch: an epoch counter restored on some ranks "
        "only (a checkpoint read by rank 0 alone) or kept per rank differs; broadcast the resumed training state "
        "from the rank that read it",
        cause="ranks-at-different-epochs",
        rank=odd[0],
        confidence=0.9,
        explains=_EPOCHS_CONSEQUENCES,
    )


#: What ranks whose samplers are at different epochs then show.
_EPOCHS_CONSEQUENCES = (
    *ECHOES,
    "data-overlap",
    "data-unseen",
    "uneven-batches",
    "collective-mismatch",
    "collective-timeout",
    "peer-connection-lost",
    "late-rank",
    "rank-left-early",
    "parameter-drift",
)


#: A sampler that draws with replacement is compared with one process's by region: the dataset
#: cut into this many equal parts, a part from which one process drew at least
#: ``_REGION_DRAWN`` distinct samples and the ranks together none cannot come from one
#: distribution (the chance is below e**-8 where the ranks drew at least half as many samples).
_REGIONS = 64
_REGION_DRAWN = 16


def compare(baseline: RunRecord, candidate: RunRecord, context: CheckContext) -> list[Finding]:
    """Samplers that draw with replacement (class-balancing ``WeightedRandomSampler``) overlap by
    design, so within a run nothing is judged of them; against one process drawing from the same
    loader, parts of the dataset it drew from often and no rank ever touched are data the
    distributed run never saw (indices taken from the wrong list: positions within a rank's
    shard used as dataset indices)."""
    ours, theirs = _with_replacement(baseline), _with_replacement(candidate)
    for site in sorted(ours.keys() & theirs.keys()):
        (length, one, one_total, _), (other_length, union, total, ranks) = ours[site], theirs[site]
        if length != other_length or length < _REGIONS * _REGION_DRAWN or ranks < 2 or 2 * total < one_total:
            continue
        size = length // _REGIONS
        region = (1 << size) - 1
        drew = {r: ((one >> (r * size)) & region).bit_count() for r in range(_REGIONS)}
        missed = [r for r in range(_REGIONS) if drew[r] and not (union >> (r * size)) & region]
        if not any(drew[r] >= _REGION_DRAWN for r in missed):
            continue
        never = sum(drew[r] for r in missed)
        spans = _spans([(r * size, (r + 1) * size - 1) for r in missed])
        return [
            Finding(
                kind="ranks",
                severity="divergence",
                title=f"the ranks never drew from samples {spans[0]} of {site}, which one process drew from: "
                f"{len(missed)} of {_REGIONS} parts of the dataset unseen",
                evidence=[
                    f"one process ({baseline.rung}): {one_total} samples drawn with replacement, {one.bit_count()} "
                    f"distinct of {length}, {never} of them in parts no rank drew from",
                    f"{ranks} ranks ({candidate.rung}): {total} samples, {union.bit_count()} distinct, the highest "
                    f"index {union.bit_length() - 1}",
                    "parts never drawn: " + ", ".join(spans[:6]) + (", ..." if len(spans) > 6 else ""),
                ],
                hint="a sampler of a rank's shard yields positions within that shard: map them to dataset indices "
                "(shard_indices[i]), or give the weighted sampler a weight per dataset index and shard its draws "
                "per rank",
                cause="data-unseen",
                confidence=0.85,
                explains=("learning-differs", "weights-differ", "replay-differs", "samples-differ-from-one-process"),
            )
        ]
    return []


def _with_replacement(record: RunRecord) -> dict[str, tuple[int, int, int, int]]:
    """Per loader site drawn with replacement that training followed: the dataset's length, the
    union of every rank's draws over every finished pass, the samples drawn and the ranks."""
    found: dict[str, tuple[int, int, int, int]] = {}
    drawn = passes(record.rank_events())
    training = {p.site for p in drawn if p.steps > 0}
    for one in drawn:
        end = one.end
        bits = _bits(end)
        if one.site not in training or not end.get("replacement") or not end.get("finished") or bits is None:
            continue
        length, union, total, ranks = found.get(one.site, (int(end.get("length") or 0), 0, 0, 0))
        found[one.site] = (length, union | bits, total + int(end.get("samples") or 0), ranks)
    for site in found:
        length, union, total, _ = found[site]
        found[site] = (length, union, total, len({p.rank for p in drawn if p.site == site}))
    return found


def _spans(ranges: list[tuple[int, int]]) -> list[str]:
    """Adjacent index ranges joined, as "512..1023"."""
    joined: list[list[int]] = []
    for start, stop in ranges:
        if joined and joined[-1][1] + 1 == start:
            joined[-1][1] = stop
        else:
            joined.append([start, stop])
    return [f"{a}..{b}" for a, b in joined]


def _unobserved(record: RunRecord) -> list[Finding]:
    """Ranks that trained (took optimizer steps) from no ``DataLoader``: what each drew was not
    observed, so shards that overlap or repeat cannot be seen; a parity verdict says so."""
    events = record.rank_events()
    trained = [rank for rank, evs in events.items() if any(e.get("kind") == "steps" and e.get("step") for e in evs)]
    if len(trained) < 2:
        return []
    return [
        Finding(
            kind="ranks",
            severity="note",
            title="the ranks trained from no DataLoader: which samples each drew was not compared",
            evidence=[
                f"ranks {', '.join(map(str, sorted(trained)[:8]))} took optimizer steps; no loader pass was recorded"
            ],
            hint="the data ledger reads torch.utils.data.DataLoader; a loop that indexes tensors itself, or a loader "
            "of another library, is not observed",
            cause="data-not-observed",
            confidence=0.1,
        )
    ]


def passes(events: dict[int, list[dict[str, Any]]]) -> list[LoaderPass]:
    """Every rank's loader passes, from ``epoch_start`` (the loader's site), ``batch`` (counted:
    a rank that hangs mid-epoch never closes it) and ``data_epoch`` (what was drawn)."""
    found = []
    for rank, evs in events.items():
        sites: dict[Any, str] = {}
        current: dict[tuple[Any, Any], LoaderPass] = {}
        numbered: dict[str, int] = defaultdict(int)
        last: LoaderPass | None = None
        for event in evs:
            kind = event.get("kind")
            if kind == "epoch_start":
                loader = event.get("loader")
                site = sites.setdefault(loader, str(event.get("site") or f"loader {loader}"))
                # Epochs are counted per site: a job that makes a new DataLoader every epoch
                # (the same line) draws its epochs 0, 1, 2 from three loaders.
                one = LoaderPass(rank, site, numbered[site], info=event)
                numbered[site] += 1
                current[(loader, event.get("epoch", 0))] = one
                found.append(one)
            elif kind == "batch" and "loader" in event:
                last = current.get((event["loader"], event.get("epoch", 0)))
                if last is not None:
                    last.batches += 1
                    if isinstance(event.get("step"), int):  # the rank's optimizer steps so far
                        last.first_step = event["step"] if last.first_step is None else last.first_step
                        last.steps = max(last.steps, event["step"] - last.first_step)
            elif kind == "collective" and last is not None and last.batches not in last.after_batch:
                last.after_batch[last.batches] = event
            elif kind == "data_epoch":
                ended = current.get((event.get("loader"), event.get("epoch", 0)))
                if ended is not None:
                    ended.closed = event
                    ended.steps = max(ended.steps, int(event.get("steps") or 0))
    return found


def _uneven(site: str, epoch: int, group: list[LoaderPass], failed: bool) -> Finding | None:
    counts: dict[int, list[int]] = defaultdict(list)
    for one in group:
        counts[one.batches].append(one.rank)
    if len(counts) < 2:
        return None
    most, fewest = max(counts), min(counts)
    if not all(p.end.get("finished") for p in group if p.batches == fewest):
        return None  # the ranks behind stopped mid-epoch (a crash, a hang elsewhere): no uneven data
    evidence = [f"{ranks_named(r)} drew {n} batches" for n, r in sorted(counts.items(), reverse=True)]
    ahead = min(counts[most])
    extra = next(p for p in group if p.rank == ahead)
    met = extra.after_batch.get(fewest + 1)
    if met is not None:
        where = met.get("user") or met.get("caller")
        evidence.append(
            f"rank {ahead}'s batch {fewest + 1}, which its peers never drew, met {met.get('op')} "
            f"#{met.get('seq')}" + (f" ({where})" if where else "")
        )
    return Finding(
        kind="ranks",
        severity="failure" if failed else "note",
        title=f"ranks draw different numbers of batches from {site} in epoch {epoch}: "
        f"{ranks_named(counts[most])} {most}, {ranks_named(counts[fewest])} {fewest}",
        evidence=evidence,
        hint="give every rank the same number of batches: DistributedSampler (it pads the shards to one "
        "length), drop_last=True, or torch.distributed.algorithms.Join for inputs that are uneven by design",
        cause="uneven-batches",
        confidence=0.9,
        explains=_UNEVEN_CONSEQUENCES if failed else (),
    )


def _bits(closed: dict[str, Any]) -> int | None:
    encoded = closed.get("bitmap")
    if not isinstance(encoded, str):
        return None
    return int.from_bytes(zlib.decompress(base64.b64decode(encoded)), "little")


def _examples(bits: int, limit: int = 5) -> list[int]:
    found: list[int] = []
    while bits and len(found) < limit:
        low = bits & -bits
        found.append(low.bit_length() - 1)
        bits ^= low
    return found


#: Ranks that cut their shards from data sets of their own (a split seeded per rank) load, for
#: the same positions, other samples than one process: the replay's finding follows from this one.
_SHARDS_DIFFER = ("samples-differ-from-one-process",)


def _coverage(site: str, epochs: list[list[LoaderPass]], world: int) -> list[Finding]:
    """Within each finished epoch drawn by every rank: samples drawn by more than one rank (or
    twice by one) beyond the sampler's padding, and samples no rank drew beyond ``drop_last``.
    The first epoch that shows either is the finding."""
    for group in epochs:
        closed = [p for p in group if p.closed is not None and p.end.get("finished")]
        if len(closed) < max(2, world) or any(p.end.get("replacement") for p in closed):
            continue
        kinds = {p.end.get("dataset") for p in closed}
        finding = _map_coverage(site, closed) if kinds == {"map"} else None
        if kinds == {"iterable"}:
            finding = _iterable_coverage(site, closed)
        if finding is not None:
            return [finding]
    return []


def _batch(group: list[LoaderPass]) -> int:
    """The largest samples-per-batch among the ranks' passes."""
    return max((int(p.end.get("samples") or 0) // max(1, p.batches) for p in group), default=1)


def _equal_shards(group: list[LoaderPass]) -> bool:
    """Whether every rank drew about as many samples (within a batch): a sharding scheme. A
    scheme where one rank draws for all (accelerate's ``dispatch_batches``) or ranks draw what
    they like is not judged for overlap."""
    counts = [int(p.end.get("samples") or 0) for p in group]
    return max(counts) - min(counts) <= max(1, _batch(group))


def _map_coverage(site: str, group: list[LoaderPass]) -> Finding | None:
    if not _equal_shards(group):
        return None
    lengths = {p.end.get("length") for p in group}
    bits = {p.rank: _bits(p.end) for p in group}
    if len(lengths) != 1 or None in lengths or any(b is None for b in bits.values()):
        return None
    length = int(next(iter(lengths)) or 0)
    masks: dict[int, int] = {rank: b for rank, b in bits.items() if b is not None}
    if len(set(masks.values())) == 1:
        orders = {p.end.get("order") for p in group}
        if len(orders) == 1:
            return None  # identical batches on every rank: data-not-sharded, named from the batches
        return Finding(
            kind="ranks",
            severity="divergence",
            title=f"every rank drew the same {next(iter(masks.values())).bit_count()} samples of {site} in epoch "
            f"{group[0].epoch}, each in an order of its own",
            evidence=[f"{ranks_named([p.rank for p in group])}: the same samples, {len(orders)} different orders"],
            hint="shard the data per rank: DistributedSampler(dataset) instead of shuffle=True",
            cause="data-not-sharded",
            confidence=0.85,
        )
    total = sum(int(p.end.get("samples") or 0) for p in group)
    union = 0
    for mask in masks.values():
        union |= mask
    distinct = union.bit_count()
    batch = _batch(group)
    # A sampler pads the shards to one length (DistributedSampler: under one sample per rank;
    # accelerate's even_batches: under a batch per rank) with samples drawn again: not overlap.
    padding = min(max(0, total - length), len(group) * batch)
    overlap = total - distinct - padding
    if overlap <= len(group):
        return None  # disjoint shards (fewer samples than the dataset holds may be by design)
    dropped = min(max(0, length - total), len(group) * (batch + 1))  # drop_last: under a batch per rank
    unseen = length - distinct
    epoch = group[0].epoch
    shared = _shared_pairs(masks)
    evidence = [
        f"{len(group)} ranks drew {total} samples of {length}: {distinct} distinct, {unseen} drawn by no rank",
        *shared,
    ]
    repeated_shards = len(set(masks.values())) < len(masks)
    if repeated_shards and unseen - dropped > len(group):
        missing = _examples(((1 << length) - 1) & ~union)
        evidence.append("never drawn: " + ", ".join(map(str, missing)) + (", ..." if unseen > len(missing) else ""))
        return Finding(
            kind="ranks",
            severity="divergence",
            title=f"{unseen} of {length} samples of {site} were drawn by no rank in epoch {epoch}: "
            f"ranks drew the same shard, {total - distinct} samples more than once",
            evidence=evidence,
            hint="shard by the global rank and world size: DistributedSampler(dataset) takes both from the process "
            "group (num_replicas=LOCAL_WORLD_SIZE or rank=LOCAL_RANK shards per host, not per job)",
            cause="data-unseen",
            confidence=0.85,
            explains=_SHARDS_DIFFER,
        )
    return Finding(
        kind="ranks",
        severity="divergence",
        title=f"the ranks' shards of {site} overlap in epoch {epoch}: {total - distinct} samples drawn more than once"
        + (f", {unseen} by no rank" if unseen > dropped else ""),
        evidence=evidence,
        hint="every rank must draw a disjoint shard of one permutation: DistributedSampler with the same seed on "
        "every rank (its default), and the rank and world size of the process group",
        cause="data-overlap",
        confidence=0.85,
        explains=_SHARDS_DIFFER,
    )


def _shared_pairs(masks: dict[int, int], limit: int = 3, budget: int = 2000) -> list[str]:
    """Pairs of ranks that drew the same samples, with how many and a few of them."""
    found: list[str] = []
    ranks = sorted(masks)
    for i, a in enumerate(ranks):
        for b in ranks[i + 1 :]:
            budget -= 1
            if budget < 0 or len(found) >= limit:
                return found
            both = masks[a] & masks[b]
            if both:
                same = " (the same shard)" if masks[a] == masks[b] else ""
                examples = ", ".join(map(str, _examples(both)))
                found.append(f"ranks {a} and {b} both drew {both.bit_count()} samples{same}, e.g. {examples}")
    return found


def _iterable_coverage(site: str, group: list[LoaderPass]) -> Finding | None:
    """Iterable datasets have no indices: samples are compared by content digest (a consistent
    subsample on large epochs, the same on every rank, so overlaps are estimated)."""
    if not _equal_shards(group):
        return None
    keep = max(int(p.end.get("digest_keep") or 0) for p in group)
    sets = {p.rank: {d for d in p.end.get("digests") or [] if not d % (1 << keep)} for p in group}
    repeats = sum(int(p.end.get("repeats") or 0) for p in group)
    if len({frozenset(s) for s in sets.values()}) == 1 and len(sets) > 1 and not repeats:
        return None  # identical on every rank: data-not-sharded
    union: set[int] = set().union(*sets.values())
    across = sum(len(s) for s in sets.values()) - len(union)
    drawn = (across << keep) + repeats
    if drawn <= len(group):
        return None
    total = sum(int(p.end.get("samples") or 0) for p in group)
    return Finding(
        kind="ranks",
        severity="divergence",
        title=f"samples of {site} were drawn more than once in epoch {group[0].epoch}: "
        f"about {drawn} of {total} (an iterable dataset, compared by content)",
        evidence=[
            f"{across << keep} samples drawn by more than one rank",
            f"{repeats} drawn twice by one rank (DataLoader workers that each yield the whole stream)",
        ],
        hint="split an IterableDataset by rank and by worker: torch.utils.data.get_worker_info() in __iter__, "
        "and the rank and world size of the process group",
        cause="data-overlap",
        confidence=0.8,
    )


def _order_repeats(site: str, epochs: list[list[LoaderPass]]) -> Finding | None:
    """A shuffling sampler that hands every rank the same order every epoch (DistributedSampler
    without ``set_epoch``)."""
    orders: dict[int, list[tuple[int, str, list[Any]]]] = defaultdict(list)
    for group in epochs:
        for one in group:
            closed = one.closed
            if closed is None or not closed.get("finished") or closed.get("shuffle") is not True:
                continue
            orders[one.rank].append((one.epoch, str(closed.get("order")), list(closed.get("first") or [])))
    if not orders or any(len(o) < 2 for o in orders.values()):
        return None
    if not all(len({order for _, order, _ in o}) == 1 for o in orders.values()):
        return None
    rank = min(orders)
    epochs_seen = [e for e, _, _ in orders[rank]]
    return Finding(
        kind="ranks",
        severity="divergence",
        title=f"{site} shuffles, but every rank draws the same order in each of {len(epochs_seen)} epochs",
        evidence=[f"rank {rank} epoch {e}: first samples {first}" for e, _, first in orders[rank][:3]],
        hint="call sampler.set_epoch(epoch) at the start of every epoch: DistributedSampler seeds its permutation "
        "with seed + epoch",
        cause="order-repeats",
        confidence=0.7,
    )
