"""Ranks that fall out of step: one late for a collective its peers timed out in, one that left
the training loop early without an error.

Both end as another rank's error (a timeout, a lost connection) that names the victim, not the
rank that caused it; what each rank did (its collectives, its batches and optimizer steps, how its
process ended) says which rank fell out of step and where. A rank stuck in a *different*
collective is :mod:`harness.judge.ranks`' collective mismatch: it times out or hangs itself, where
a late rank is busy in its own code and never does.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from harness.judge.data import passes
from harness.judge.findings import ECHOES, Finding, ranks_named
from harness.judge.model import shards_parameters
from harness.judge.protocol import CheckContext
from harness.record.run_record import RunRecord, loss_ledger_steps

#: A collective that gave up waiting: gloo ("Timed out waiting 2000ms for recv operation"), NCCL's
#: watchdog ("Watchdog caught collective operation timeout: ... Timeout(ms)=600000"), a store's
#: wait ("Socket Timeout", "wait timeout after 30000ms").
_TIMEOUT = re.compile(r"timed out|timeout", re.IGNORECASE)
_MILLISECONDS = re.compile(r"(?:waiting |Timeout\(ms\)=|timeout after )(\d+)\s*(?:ms|milliseconds)?", re.IGNORECASE)
#: What a rank whose peer is gone prints (gloo, NCCL, the TCP store).
_PEER_LOST = re.compile(r"Connection closed by peer|Connection reset by peer|Broken pipe|remote process exited")
#: What these findings account for: the victims' errors, and what the verdict would otherwise
#: blame (the ranks' collective sequences differ in length).
_EXPLAINED = (*ECHOES, "collective-timeout", "collective-mismatch", "peer-connection-lost")


def check_run(record: RunRecord, context: CheckContext) -> list[Finding]:
    events = record.rank_events()
    found = [
        *_skipped_steps(events),
        *_learning_rates(events),
        *_non_finite_losses(events),
        *_unaveraged_gradients(events),
    ]
    if record.status == "succeeded":
        return found
    ranks = {int(p["rank"]): p for p in record.processes() if p.get("rank") is not None and _launched_rank(p)}
    if len(ranks) < 2:
        return found
    return [*_lateranks_named(ranks, events), *_left_early(record, ranks, events), *found]


def _learning_rates(events: dict[int, list[dict[str, Any]]]) -> list[Finding]:
    """The learning rate every rank's optimizer applied at each step (the loss ledger's, of the
    first parameter group): ranks that apply one averaged gradient at different rates drift apart."""
    rates: dict[int, dict[int, float]] = {}
    for rank, evs in events.items():
        for taken in (taken for event in evs for taken in loss_ledger_steps(event)):
            if isinstance(taken["lr"], int | float):
                rates.setdefault(rank, {})[int(taken["step"])] = float(taken["lr"])
    if len(rates) < 2:
        return []
    for step in sorted(set.intersection(*(set(r) for r in rates.values()))):
        at = {rank: r[step] for rank, r in sorted(rates.items())}
        if max(at.values()) - min(at.values()) <= 1e-9 * max(abs(v) for v in at.values()):
            continue
        usual = Counter(at.values()).most_common(1)[0][0]
        odd = [rank for rank, lr in at.items() if lr != usual]
        return [
            Finding(
                kind="ranks",
                severity="divergence",
                title=f"the ranks applied different learning rates from optimizer step {step}: "
                f"{', '.join(f'rank {r} {at[r]:.6g}' for r in odd[:4])} against {usual:.6g} on the others",
                evidence=[f"rank {rank}: lr {lr:.6g} at step {step}" for rank, lr in at.items()][:16],
                hint="a schedule driven by a value of one rank's own (ReduceLROnPlateau given its shard's validation "
                "loss, a scheduler stepped on some ranks only): reduce the metric across ranks before "
                "scheduler.step(metric), and step it on every rank",
                step=step,
                cause="learning-rate-differs-across-ranks",
                rank=odd[0],
                confidence=0.9,
                explains=("parameter-drift", "replay-differs", "learning-differs", "weights-differ"),
            )
        ]
    return []


def _unaveraged_gradients(events: dict[int, list[dict[str, Any]]]) -> list[Finding]:
    """Optimizer steps at which the ranks of one DistributedDataParallel model held different
    gradients, where at the steps around them they held the same one: DDP averages the gradients
    of a backward pass that synchronises, so after it every rank's gradient, and its norm, is the
    same whatever its own batch and parameters; a step whose backward passes all ran without
    synchronising (inside ``no_sync()``) applies each rank's own. Departures must be followed by
    steps that agree again: a job that stops averaging for good (local SGD after its warm-up,
    parameters DDP was told to ignore) is left alone, as are sharded models (each rank's norm is
    of its own shard) and DDP over a subgroup."""
    wraps = [e for evs in events.values() for e in evs if e.get("kind") == "model"]
    if not any(w.get("wrapper") == "DistributedDataParallel" for w in wraps) or any(w.get("group") for w in wraps):
        return []
    if shards_parameters(events):
        return []
    ledgers = _step_ledgers(events)
    if len(ledgers) < 2 or len(ledgers) != len(events):
        return []
    agree: dict[int, bool] = {}
    for step in sorted(set.intersection(*(set(ledger) for ledger in ledgers.values()))):
        norms = [ledger[step]["grad_norm"] for ledger in ledgers.values()]
        if all(isinstance(n, int | float) and math.isfinite(n) for n in norms):
            agree[step] = max(norms) - min(norms) <= 1e-6 * max(abs(n) for n in norms)
    if sum(agree.values()) < 2:
        return []
    steps = sorted(agree)
    departed = [s for i, s in enumerate(steps) if not agree[s] and any(agree[later] for later in steps[i + 1 :])]
    if not departed:
        return []
    first = departed[0]
    evidence = [
        f"step {first}: " + ", ".join(f"rank {r} {ledger[first]['grad_norm']:.6g}" for r, ledger in ledgers.items())
    ]
    usual = _most_common(ledger[s]["backwards"] for ledger in ledgers.values() for s in steps if agree[s])
    odd = _most_common(ledger[s]["backwards"] for ledger in ledgers.values() for s in departed)
    if odd != usual:
        evidence.append(f"backward passes before those steps: {odd}; before the steps that agree: {usual}")
    named = ", ".join(map(str, departed[:6])) + (f" and {len(departed) - 6} more" if len(departed) > 6 else "")
    return [
        Finding(
            kind="ranks",
            severity="divergence",
            title=f"the ranks stepped with gradients DDP never averaged at optimizer step{'s' * (len(departed) > 1)} "
            f"{named}: their gradient norms differ there, where at the {sum(agree.values())} other steps compared "
            "every rank held the same averaged gradient",
            evidence=evidence,
            hint="every backward pass before those steps ran without DDP's gradient synchronisation (inside "
            "model.no_sync()): let the last backward pass before each optimizer step synchronise, a short "
            "accumulation window at the end of an epoch included (sync when (i + 1) % accum == 0 or i + 1 == "
            "len(loader)), or all-reduce the gradients before that step",
            step=first,
            cause="step-with-unaveraged-gradients",
            rank=min(ledgers),
            confidence=0.9,
            explains=("parameter-drift", "replay-differs", "learning-differs", "weights-differ"),
        )
    ]


def _step_ledgers(events: dict[int, list[dict[str, Any]]]) -> dict[int, dict[int, dict[str, Any]]]:
    """Each rank's loss ledger by optimizer step, for the ranks that have one, by rank."""
    ledgers = {rank: {int(t["step"]): t for e in evs for t in loss_ledger_steps(e)} for rank, evs in events.items()}
    return {rank: ledger for rank, ledger in sorted(ledgers.items()) if ledger}


def _most_common(values: Iterable[Any]) -> Any:
    return Counter(values).most_common(1)[0][0]


def _non_finite_losses(events: dict[int, list[dict[str, Any]]]) -> list[Finding]:
    """A loss that turned non-finite on some ranks only, whose NaN the gradient average carried to
    the ranks whose own loss was finite (their reduced gradient, or their parameters after it, are
    not finite): the cause lies in what those ranks computed on their own batch (a mean over a
    count that is zero in a small per-rank batch, one bad record), not in the learning rate or
    the precision. A job that skips such a step alike on every rank shows no spread: no finding."""
    ledgers = _step_ledgers(events)
    if len(ledgers) < 2:
        return []
    for step in sorted(set.intersection(*(set(ledger) for ledger in ledgers.values()))):
        losses = {rank: ledger[step]["loss"] for rank, ledger in sorted(ledgers.items())}
        if not all(isinstance(v, int | float) for v in losses.values()):
            continue
        bad = [rank for rank, v in losses.items() if not math.isfinite(v)]
        if not bad:
            continue
        good = [rank for rank in losses if rank not in bad]
        spread = [rank for rank in good if _not_finite_after(events[rank], ledgers[rank], step)]
        if not good or not spread:
            return []
        return [
            Finding(
                kind="ranks",
                severity="divergence",
                title=f"the loss turned non-finite at optimizer step {step} on {ranks_named(bad)} while "
                f"{ranks_named(good)} computed a finite one: the gradient average carried it to every replica",
                evidence=[f"rank {rank}: loss {losses[rank]:.6g} at step {step}" for rank in losses][:16]
                + [f"{ranks_named(spread)}: gradient or parameters not finite from step {step}, their own loss finite"],
                hint="look at what those ranks computed on their own batch: a mean divided by a count that can be "
                "zero in a per-rank batch (clamp it, or reduce the sum and the count across ranks), a record that "
                "is not finite; decide to skip a step alike on every rank (all_reduce a flag)",
                step=step,
                cause="loss-non-finite-on-some-ranks",
                rank=bad[0],
                confidence=0.9,
                explains=(
                    "weights-non-finite",
                    "replay-differs",
                    "learning-differs",
                    "weights-differ",
                    "parameter-drift",
                ),
            )
        ]
    return []


def _not_finite_after(events: list[dict[str, Any]], ledger: dict[int, dict[str, Any]], step: int) -> bool:
    """Whether a rank's reduced gradient at ``step``, or its parameters at a later step, are not finite."""
    norm = ledger[step].get("grad_norm")
    if isinstance(norm, int | float) and not math.isfinite(norm):
        return True
    return any(
        e.get("kind") == "params" and int(e.get("step", -1)) >= step and not math.isfinite(float(e.get("sum", 0.0)))
        for e in events
    )


def _skipped_steps(events: dict[int, list[dict[str, Any]]]) -> list[Finding]:
    """A pass over the data in which every rank drew the same batches and some took fewer
    optimizer steps: a decision to skip the update made from a value of the rank's own (a gradient
    scaler's overflow check over a rank's own shard, a NaN guard on its own loss)."""
    finished: dict[tuple[str, int], dict[int, tuple[int, int]]] = {}
    for one in passes(events):
        if one.end.get("finished"):
            batches = int(one.end.get("batches") or one.batches)
            finished.setdefault((one.site, one.epoch), {})[one.rank] = (batches, int(one.end.get("steps") or 0))
    for (site, epoch), counts in finished.items():
        if len(counts) != len(events) or len(counts) < 2 or len({b for b, _ in counts.values()}) != 1:
            continue
        steps = {rank: s for rank, (_, s) in sorted(counts.items())}
        most = max(steps.values())
        fewer = [rank for rank, s in steps.items() if s < most]
        if not fewer:
            continue
        batches = next(iter(counts.values()))[0]
        return [
            Finding(
                kind="ranks",
                severity="divergence",
                title=f"rank {fewer[0]} took {steps[fewer[0]]} optimizer steps in epoch {epoch} of {site} where "
                f"{'its peers' if len(fewer) == 1 else 'others'} took {most}, over the same {batches} batches",
                evidence=[f"rank {rank}: {batches} batches, {s} optimizer steps" for rank, s in steps.items()][:16],
                hint="skipping an update must be decided alike on every rank: a gradient scaler on a sharded model "
                "checks only the rank's own shard for overflow (FSDP: ShardedGradScaler); a guard on the rank's own "
                "loss or gradients sees only its batch (all_reduce the flag first)",
                cause="steps-skipped-on-some-ranks",
                rank=fewer[0],
                confidence=0.9,
                explains=(
                    "parameter-drift",
                    "replay-differs",
                    "learning-differs",
                    "weights-differ",
                    "weights-non-finite",
                ),
            )
        ]
    return []


def _launched_rank(process: dict[str, Any]) -> bool:
    """A rank's own process, not a child it started that inherited its rank."""
    return process.get("inherited_rank") is None


def _collectives(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("kind") == "collective" and not e.get("group")]


def _lateranks_named(ranks: dict[int, dict[str, Any]], events: dict[int, list[dict[str, Any]]]) -> list[Finding]:
    """Ranks that timed out in a collective of the default group, and ranks that never reached it
    and did not time out themselves: those were still in their own code (a rank stuck in another
    collective would have timed out there too)."""
    timed_out = {r: p for r, p in ranks.items() if _TIMEOUT.search(str(p.get("exception") or ""))}
    if not timed_out:
        return []
    calls = {rank: _collectives(events.get(rank, [])) for rank in ranks}
    reached = min(len(calls[r]) for r in timed_out)
    if reached == 0:
        return []
    late = sorted(r for r in ranks if r not in timed_out and len(calls[r]) < reached)
    if not late:
        return []
    waited = calls[min(timed_out)][reached - 1]
    where = f"{waited['op']} #{reached} at {waited.get('caller')}"
    exception = str(timed_out[min(timed_out)].get("exception") or "").strip().splitlines()
    millis = _MILLISECONDS.search(" ".join(exception))
    limit = f" after {int(millis.group(1)) / 1000:g} s" if millis else ""
    evidence = [
        f"rank {r}: entered {where} at {_clock(calls[r][reached - 1].get('t'))} and timed out"
        for r in sorted(timed_out)
    ]
    evidence += [f"rank {min(timed_out)} raised: {exception[0][:300]}"] if exception else []
    for rank in late:
        last = _last_seen(events.get(rank, []))
        ended = ranks[rank].get("exit_code")
        how = "was stopped by the launcher" if ended is None else f"ended with exit code {ended}"
        evidence.append(
            f"rank {rank}: never reached {where}; last seen {last} and it did not time out itself: "
            f"it was still in its own code when its peers gave up, then {how}"
        )
    names = ", ".join(str(r) for r in sorted(timed_out))
    late_names = ", ".join(str(r) for r in late)
    return [
        Finding(
            kind="ranks",
            severity="failure",
            title=f"rank{'s' if len(late) > 1 else ''} {late_names} had not reached {where} when "
            f"rank{'s' if len(timed_out) > 1 else ''} {names} gave up waiting{limit} (the process group's timeout)",
            evidence=evidence,
            hint="a rank that works alone before a collective (rank 0 preprocessing, downloading, evaluating or "
            "saving) must finish within the process group's timeout: raise init_process_group(timeout=...), or do "
            "that work before init_process_group, on every rank, or in a separate step",
            cause="late-rank",
            rank=late[0],
            confidence=0.97,
            explains=_EXPLAINED,
        )
    ]


def _left_early(
    record: RunRecord, ranks: dict[int, dict[str, Any]], events: dict[int, list[dict[str, Any]]]
) -> list[Finding]:
    """Ranks whose process ended without an error (exit 0) in a run whose other ranks failed,
    after fewer batches than those peers drew and with their loader's epoch unfinished: they left
    the loop on a decision of their own (early stopping, a target loss, a skipped step), and the
    peers' next collective had no partner."""
    failed = sorted(r for r, p in ranks.items() if p.get("exception") or p.get("exit_code") not in (0, None))
    clean = sorted(r for r, p in ranks.items() if p.get("exit_code") == 0 and not p.get("exception"))
    if not failed or not clean:
        return []
    drawn = {rank: _batches(events.get(rank, [])) for rank in ranks}
    most = max(drawn[r][0] for r in failed)
    early = [r for r in clean if drawn[r][0] < most and drawn[r][1]]
    if not early:
        return []
    evidence = []
    for rank in early:
        batches, unfinished = drawn[rank]
        evidence.append(
            f"rank {rank}: left its loop at {unfinished} after {batches} batches and "
            f"{_steps(events.get(rank, []))} optimizer steps, with the epoch unfinished, and ended without an error "
            f"(exit 0) at {ranks[rank].get('ended_at')}"
        )
        line = _last_line(record, rank)
        if line:
            evidence.append(f"rank {rank} printed last: {line}")
    for rank in failed:
        error = str(ranks[rank].get("exception") or "").strip().splitlines()
        lost = " (lost its peer)" if error and _PEER_LOST.search(error[0]) else ""
        evidence.append(
            f"rank {rank}: drew {drawn[rank][0]} batches, took {_steps(events.get(rank, []))} optimizer steps, "
            f"then failed{lost}" + (f": {error[0][:200]}" if error else "")
        )
    names = ", ".join(str(r) for r in early)
    return [
        Finding(
            kind="ranks",
            severity="failure",
            title=f"rank{'s' if len(early) > 1 else ''} {names} left the training loop early without an error "
            f"({', '.join(str(drawn[r][0]) for r in early)} batches against up to {most} on the ranks that failed)",
            evidence=evidence,
            hint="every rank must leave the loop at the same step: decide to stop (early stopping, a target loss, "
            "a time budget, a non-finite loss) from a value every rank agrees on, e.g. all_reduce the flag "
            "(MAX or MIN) before acting on it",
            cause="rank-left-early",
            rank=early[0],
            confidence=0.96,
            explains=_EXPLAINED,
        )
    ]


def _batches(events: list[dict[str, Any]]) -> tuple[int, str | None]:
    """(batches drawn over every loader pass, the site of a pass left unfinished or None)."""
    passes = [e for e in events if e.get("kind") == "data_epoch"]
    unfinished = next((str(e.get("site")) for e in reversed(passes) if not e.get("finished")), None)
    return sum(int(e.get("batches") or 0) for e in passes), unfinished


def _steps(events: list[dict[str, Any]]) -> int:
    steps = [int(step["step"]) for event in events for step in loss_ledger_steps(event)]
    return max(steps) + 1 if steps else 0


def _last_seen(events: list[dict[str, Any]]) -> str:
    if not events:
        return "nowhere (the probe recorded nothing)"
    last = events[-1]
    what = {"dist_init": "init_process_group"}.get(str(last.get("kind")), str(last.get("kind")))
    if last.get("kind") == "collective":
        what = f"{last.get('op')} (completed by every rank)"
    where = last.get("caller") or last.get("site")
    return f"after {what}" + (f" at {where}" if where else "") + f" at {_clock(last.get('t'))}"


def _last_line(record: RunRecord, rank: int) -> str | None:
    path = record.rank_logs().get(rank)
    if path is None:
        return None
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else None


def _clock(t: Any) -> str:
    return datetime.fromtimestamp(float(t), tz=UTC).strftime("%H:%M:%S.%f")[:-3] if isinstance(t, int | float) else "?"
