"""Checks within one run, across its ranks and processes, from what the probe recorded.

These find faults that no comparison between rungs can see, because every rung shares them:
ranks that consume identical batches (data not sharded), parameters that drift apart, a
collective issued by some ranks only, a hyperparameter the script parsed into something else,
processes that crashed while the job reported success, files several ranks wrote.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from harness.diff.findings import Finding
from harness.diff.protocol import CheckContext
from harness.record import RunRecord


def check_run(record: RunRecord, context: CheckContext) -> list[Finding]:
    events = record.rank_events()
    processes = record.processes()
    return [
        *_hidden_failures(record, processes),
        *_identical_batches(events),
        *_collective_mismatch(events),
        *_parameter_drift(events),
        *_hyperparameters(record, processes),
        *_shared_writes(events),
    ]


def _hidden_failures(record: RunRecord, processes: list[dict[str, Any]]) -> list[Finding]:
    if record.status != "succeeded":
        return []
    crashed = [p for p in processes if p.get("exception") or p.get("exit_code") not in (0, None)]
    if not crashed:
        return []
    return [
        Finding(
            "ranks",
            "failure",
            f"the job reported success but {len(crashed)} of its processes failed",
            [
                f"{p['host']} pid {p['pid']}"
                + (f" rank {p['rank']}" if p.get("rank") is not None else "")
                + f": exit {p.get('exit_code')}"
                + (f", {p['exception']}" if p.get("exception") else "")
                for p in crashed[:10]
            ],
            hint="check every child's exit code (multiprocessing: join(), then exitcode), "
            "or use torch.multiprocessing.spawn, which raises when a child fails",
            cause="hidden-child-failure",
            confidence=0.9,
        )
    ]


def _identical_batches(events: dict[int, list[dict[str, Any]]]) -> list[Finding]:
    digests = {rank: [e["digest"] for e in evs if e["kind"] == "batch"] for rank, evs in events.items()}
    digests = {rank: d for rank, d in digests.items() if d}
    if len(digests) < 2:
        return []
    steps = min(len(d) for d in digests.values())
    same = [n for n in range(steps) if len({d[n] for d in digests.values()}) == 1]
    if not steps or len(same) < max(1, steps // 2):
        return []
    return [
        Finding(
            "ranks",
            "divergence",
            f"all {len(digests)} ranks consumed identical batches ({len(same)} of {steps} steps)",
            [f"batch {n + 1}: every rank read digest {digests[min(digests)][n]}" for n in same[:3]],
            hint="shard the data per rank: DistributedSampler(dataset, num_replicas=world_size, rank=rank), "
            "or split the files by rank",
            step=same[0],
            cause="data-not-sharded",
            confidence=0.9,
        )
    ]


def _collective_mismatch(events: dict[int, list[dict[str, Any]]]) -> list[Finding]:
    calls = {rank: [e for e in evs if e["kind"] == "collective"] for rank, evs in events.items()}
    if len(calls) < 2:
        return []
    longest = max(len(c) for c in calls.values())
    for index in range(longest):
        seen = {
            rank: (c[index]["op"], json.dumps(c[index]["shapes"])) if index < len(c) else None
            for rank, c in calls.items()
        }
        if len(set(seen.values())) == 1:
            continue
        odd = _odd_ranks(calls, seen, index)
        evidence = []
        for rank in sorted(seen):
            call = calls[rank][index] if index < len(calls[rank]) else None
            evidence.append(
                f"rank {rank} collective #{index + 1}: "
                + (f"{call['op']} {call['shapes']} at {call['caller']}" if call else "none (never called)")
            )
        blame = odd[0]
        line = calls[blame][index]["caller"] if index < len(calls[blame]) else _last_caller(calls[blame])
        return [
            Finding(
                "ranks",
                "failure",
                f"rank {blame} issued a different collective (#{index + 1}) than its peers"
                + (f" at {line}" if line else ""),
                evidence,
                hint="every rank must issue the same collectives in the same order with the same shapes; "
                "move rank-specific work (logging, eval, saving) outside collectives or guard all ranks alike",
                cause="collective-mismatch",
                rank=blame,
                confidence=0.95,
            )
        ]
    return []


def _odd_ranks(calls: dict[int, list[dict[str, Any]]], seen: dict[int, Any], index: int) -> list[int]:
    """The ranks at fault for a mismatch at ``index``: those whose call site no other rank ever
    uses (an extra collective under ``if rank == 0``); else those outside the majority."""

    def site(rank: int) -> str | None:
        return calls[rank][index]["caller"] if index < len(calls[rank]) else None

    unique = [
        rank
        for rank in calls
        if site(rank) is not None
        and not any(site(rank) == call["caller"] for other in calls if other != rank for call in calls[other])
    ]
    if unique:
        return sorted(unique)
    majority, _ = Counter(seen.values()).most_common(1)[0]
    return sorted(rank for rank, call in seen.items() if call != majority)


def _last_caller(calls: list[dict[str, Any]]) -> str | None:
    return calls[-1]["caller"] if calls else None


def _parameter_drift(events: dict[int, list[dict[str, Any]]]) -> list[Finding]:
    params = {rank: {e["step"]: e for e in evs if e["kind"] == "params"} for rank, evs in events.items()}
    params = {rank: p for rank, p in params.items() if p}
    if len(params) < 2:
        return []
    common = sorted(set.intersection(*(set(p) for p in params.values())))
    for step in common:
        by_rank = {rank: p[step] for rank, p in params.items()}
        if len({e["digest"] for e in by_rank.values()}) > 1:
            return [
                Finding(
                    "ranks",
                    "divergence",
                    f"parameters differ across ranks from optimizer step {step}",
                    [
                        f"rank {rank}: sum={e['sum']:.9g} abs_sum={e['abs_sum']:.9g}"
                        for rank, e in sorted(by_rank.items())
                    ],
                    hint="replicas drift apart when gradients are not all-reduced (no DDP wrapper, no_sync() left on, "
                    "a parameter updated outside the optimizer) or when ranks start from different seeds",
                    step=step,
                    cause="parameter-drift",
                    confidence=0.8,
                )
            ]
    return []


def _hyperparameters(record: RunRecord, processes: list[dict[str, Any]]) -> list[Finding]:
    given = record.manifest["job"]["hyperparameters"]
    parsed = next((p["parsed_args"] for p in processes if p.get("parsed_args")), None)
    if not parsed or not given:
        return []
    evidence = []
    for key, value in given.items():
        name = key.replace("-", "_")
        if name in parsed and not _same(value, parsed[name]):
            evidence.append(
                f"{key}: the job gave {value!r} ({type(value).__name__}), "
                f"the script parsed {parsed[name]!r} ({type(parsed[name]).__name__})"
            )
    if not evidence:
        return []
    return [
        Finding(
            "hyperparameters",
            "divergence",
            f"{len(evidence)} hyperparameters changed on the way into the script",
            evidence,
            hint="SageMaker passes every hyperparameter as a string (booleans as 'True'/'False' by the toolkit, "
            "'true'/'false' by ModelTrainer); argparse type=bool turns any non-empty string into True: "
            "parse booleans explicitly",
            cause="hyperparameter-type",
            confidence=0.85,
        )
    ]


def _same(given: Any, parsed: Any) -> bool:
    """Booleans must stay booleans; numbers compare by value; the rest by their text."""
    if isinstance(given, bool) or isinstance(parsed, bool):
        return given is parsed
    if isinstance(given, (int, float)) and isinstance(parsed, (int, float)):
        return float(given) == float(parsed)
    return str(parsed) == str(given)


def _shared_writes(events: dict[int, list[dict[str, Any]]]) -> list[Finding]:
    writers: dict[str, set[int]] = {}
    outside: dict[str, set[int]] = {}
    for rank, evs in events.items():
        for event in evs:
            if event["kind"] == "write":
                writers.setdefault(event["path"], set()).add(rank)
                if not event.get("contract", True):
                    outside.setdefault(event["path"], set()).add(rank)
    findings = []
    shared = {path: ranks for path, ranks in writers.items() if len(ranks) > 1 and "/model" in path}
    if shared:
        findings.append(
            Finding(
                "ranks",
                "divergence",
                f"{len(shared)} model files written by more than one rank",
                [f"{Path(path).name}: ranks {sorted(ranks)}" for path, ranks in sorted(shared.items())[:10]],
                hint="save from global rank 0 only (if dist.get_rank() == 0), or give each rank its own file name",
                cause="model-written-by-several-ranks",
                confidence=0.85,
            )
        )
    if outside:
        findings.append(
            Finding(
                "ranks",
                "note",
                f"{len(outside)} files written outside the SageMaker contract paths",
                [f"{path}: ranks {sorted(ranks)}" for path, ranks in sorted(outside.items())[:10]],
                hint="only /opt/ml/model, /opt/ml/output and /opt/ml/checkpoints survive a SageMaker job",
                cause="writes-outside-contract",
                confidence=0.4,
            )
        )
    return findings
