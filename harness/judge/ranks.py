"""Checks within one run, across its ranks and processes, from what the probe recorded.

These find faults that no comparison between rungs can see, because every rung shares them:
ranks that consume identical batches (data not sharded), parameters that drift apart, a
collective issued by some ranks only, a hyperparameter the script parsed into something else,
processes that crashed while the job reported success, files several ranks wrote.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from harness.judge.failures import printed, root_error
from harness.judge.findings import ECHOES, Finding, Severity, ranks_named
from harness.judge.model import shards_parameters
from harness.judge.protocol import CheckContext
from harness.record.run_record import RunRecord


def check_run(record: RunRecord, context: CheckContext) -> list[Finding]:
    events = record.rank_events()
    processes = record.processes()
    return [
        *_hidden_failures(record, processes),
        *_identical_batches(events),
        *_group_creation_mismatch(events),
        *_collective_mismatch(events),
        *_point_to_point(events, record.status),
        *_parameter_drift(events),
        *_hyperparameters(record, processes),
        *_shared_writes(events),
    ]


#: The target of every child torch.multiprocessing starts (``torch.multiprocessing.spawn._wrap``:
#: ``spawn``, ``start_processes``, and through them torch's elastic agent, Lightning's
#: ``ddp_spawn``, accelerate's ``notebook_launcher``, PyTorch-Ignite's ``Parallel``).
_TORCH_MULTIPROCESSING_TARGET = "_wrap"


def _reported_to_parent(process: dict[str, Any]) -> bool:
    """Whether the parent was told of this child's failure: torch.multiprocessing's context
    raises in the parent (``ProcessRaisedException``, ``ProcessExitedException``) when a child it
    started fails, so a job that still succeeded caught that error or restarted the ranks (the
    elastic agent's ``max_restarts``) on purpose. multiprocessing's own ``Process`` tells nobody."""
    return process.get("mp_target") == _TORCH_MULTIPROCESSING_TARGET


def _hidden_failures(record: RunRecord, processes: list[dict[str, Any]]) -> list[Finding]:
    """Processes that failed while the job reported success, named with what they printed (the
    signature and the line), so that the cause is in this finding and not a note below it.
    Children whose failure torch.multiprocessing raised in their parent were not hidden: a note."""
    if record.status != "succeeded":
        return []
    failed = [p for p in processes if p.get("exception") or p.get("exit_code") not in (0, None)]
    crashed = [p for p in failed if not _reported_to_parent(p)]
    handled = [p for p in failed if _reported_to_parent(p)]
    if not crashed:
        return _handled_failures(handled)
    error = root_error(
        record, hosts={str(p.get("host")) for p in crashed}, texts=[str(p.get("exception") or "") for p in crashed]
    )
    hint = (
        "check every child's exit code (multiprocessing: join(), then exitcode), "
        "or use torch.multiprocessing.spawn, which raises when a child fails"
    )
    return [
        Finding(
            kind="ranks",
            severity="failure",
            title=f"the job reported success but {len(crashed)} of its processes failed"
            + (f": {error.signature.title}" if error else ""),
            evidence=[
                *(printed(error) if error else []),
                *(
                    f"{p['host']} pid {p['pid']}"
                    + (f" rank {p['rank']}" if p.get("rank") is not None else "")
                    + (f" (child of rank {p['inherited_rank']})" if p.get("inherited_rank") is not None else "")
                    + f": exit {p.get('exit_code')}"
                    + (f", {p['exception']}" if p.get("exception") else "")
                    for p in crashed[:10]
                ),
            ],
            hint=f"{error.signature.hint} Then {hint}." if error else hint,
            cause="hidden-child-failure",
            confidence=0.9,
        )
    ]


def _handled_failures(handled: list[dict[str, Any]]) -> list[Finding]:
    """Children that failed, were reported to their parent by torch.multiprocessing, and the job
    went on to succeed: what it was told (a note, never a failure)."""
    if not handled:
        return []
    return [
        Finding(
            kind="ranks",
            severity="note",
            title=f"{len(handled)} processes started by torch.multiprocessing failed; their parent was told "
            "(the error raised in it, or its elastic agent restarted them) and the job succeeded",
            evidence=[
                f"{p['host']} pid {p['pid']}"
                + (f" rank {p['rank']}" if p.get("rank") is not None else "")
                + f": exit {p.get('exit_code')}"
                + (f", {p['exception']}" if p.get("exception") else "")
                for p in handled[:10]
            ],
            cause="child-failure-handled",
            confidence=0.2,
        )
    ]


def _identical_batches(events: dict[int, list[dict[str, Any]]]) -> list[Finding]:
    digests = {
        rank: [e["digest"] for e in evs if e["kind"] == "batch" and "digest" in e] for rank, evs in events.items()
    }
    digests = {rank: d for rank, d in digests.items() if d}
    if len(digests) < 2:
        return []
    steps = min(len(d) for d in digests.values())
    same = [n for n in range(steps) if len({d[n] for d in digests.values()}) == 1]
    if not steps or len(same) < max(1, steps // 2):
        return []
    evidence = [f"batch {n + 1}: every rank read digest {digests[min(digests)][n]}" for n in same[:3]]
    orders = _index_orders(events)
    if len(orders) == len(digests) and len(set(orders.values())) == len(orders):
        # Each rank drew other dataset indices, and the batches are the same all the same.
        return [
            Finding(
                kind="ranks",
                severity="divergence",
                title=f"all {len(digests)} ranks consumed identical batches ({len(same)} of {steps} steps) although "
                "each drew other dataset indices: what a sample holds comes from a random stream seeded alike on "
                "every rank, not from its index",
                evidence=[
                    *evidence,
                    *(f"rank {rank}: indices drawn in order {order}" for rank, order in orders.items()),
                ],
                hint="seed the random draws of a Dataset or its workers per rank (a seed plus the rank in "
                "worker_init_fn or the generator), or make each sample a function of its index",
                step=same[0],
                cause="random-stream-same-on-every-rank",
                confidence=0.9,
            )
        ]
    return [
        Finding(
            kind="ranks",
            severity="divergence",
            title=f"all {len(digests)} ranks consumed identical batches ({len(same)} of {steps} steps)",
            evidence=evidence,
            hint="shard the data per rank: DistributedSampler(dataset, num_replicas=world_size, rank=rank), "
            "or split the files by rank",
            step=same[0],
            cause="data-not-sharded",
            confidence=0.9,
        )
    ]


def _index_orders(events: dict[int, list[dict[str, Any]]]) -> dict[int, str]:
    """Per rank, the order digest of the dataset indices its first map-style loader pass drew."""
    orders = {}
    for rank, evs in sorted(events.items()):
        first = next((e for e in evs if e.get("kind") == "data_epoch" and e.get("bitmap")), None)
        if first is not None and first.get("order"):
            orders[rank] = str(first["order"])
    return orders


#: Point-to-point calls (probe events ``collective`` with ``dir`` and ``peer``): they pair up across
#: ranks, a send with a receive; no two ranks issue them alike.
_POINT_TO_POINT = frozenset(
    ("send", "recv", "isend", "irecv", "send_object_list", "recv_object_list", "batch_isend_irecv")
)
Group = tuple[int, ...] | None  # the global ranks of a process group; None for the default group


def _collective_mismatch(events: dict[int, list[dict[str, Any]]]) -> list[Finding]:
    """Within each process group, every member issues the same collectives in the same order,
    with the same shapes and dtypes. Point-to-point calls are left to :func:`_point_to_point`; an
    object collective is one call (the probe records the outer call only); a rank outside a
    group is no member of it."""
    calls: dict[Group, dict[int, list[dict[str, Any]]]] = {}
    for rank, evs in events.items():
        for event in evs:
            if event["kind"] == "collective" and event.get("op") not in _POINT_TO_POINT:
                group = tuple(event["group"]) if event.get("group") else None
                calls.setdefault(group, {}).setdefault(rank, []).append(event)
    found = []
    for group, by_rank in calls.items():
        members = sorted(events) if group is None else [r for r in group if r in events]
        finding = _mismatch_in(group, {rank: by_rank.get(rank, []) for rank in members})
        if finding is not None:
            found.append(finding)
    return [min(found, key=lambda pair: pair[0])[1]] if found else []


def _group_creation_mismatch(events: dict[int, list[dict[str, Any]]]) -> list[Finding]:
    """``new_group`` is entered by every rank of the job for every group, in the same order, even by
    ranks outside the group: torch names a group by how many were created before it, so ranks that
    create different groups in one slot give them one name and share its store keys (they hang, or
    pair with the wrong peers). The n-th creation of every rank must name the same members. A rank
    with fewer creations counts only where it went on past its peers' (a rank that stopped early
    is another finding's). Creations with ``use_local_synchronization`` are their members' alone."""
    made = {
        rank: [e for e in evs if e["kind"] == "new_group" and not e.get("local_synchronization")]
        for rank, evs in events.items()
    }
    if len(made) < 2 or not any(made.values()):
        return []
    last = {rank: max((e.get("t", 0.0) for e in evs), default=0.0) for rank, evs in events.items()}
    for index in range(max(len(calls) for calls in made.values())):
        when = min(calls[index].get("t", 0.0) for calls in made.values() if index < len(calls))
        members = {
            rank: _frozen(calls[index].get("ranks")) if index < len(calls) else _NOT_CREATED
            for rank, calls in made.items()
            if index < len(calls) or last[rank] > when
        }
        if len(set(members.values())) < 2:
            continue
        by_choice: dict[Any, list[int]] = {}
        for rank, chosen in sorted(members.items()):
            by_choice.setdefault(chosen, []).append(rank)
        said = "; ".join(
            f"{ranks_named(ranks)} {'never made it' if chosen is _NOT_CREATED else f'made {_members(chosen)}'}"
            for chosen, ranks in by_choice.items()
        )
        odd = sorted(by_choice.items(), key=lambda item: (-len(item[1]), item[1][0]))[-1][1]
        call = made[odd[0]][index] if index < len(made[odd[0]]) else None
        where = f" at {call['caller']}" + (f" (called from {call['user']})" if call.get("user") else "") if call else ""
        return [
            Finding(
                kind="ranks",
                severity="failure",
                title=f"the ranks created different process groups at new_group #{index + 1}{where}: {said}",
                evidence=[
                    f"rank {rank} new_group #{index + 1}: "
                    + (
                        f"{_members(made[rank][index].get('ranks'))} at {made[rank][index].get('caller')}"
                        if index < len(made[rank])
                        else "none (it went on without creating it)"
                    )
                    for rank in sorted(members)
                ][:16],
                hint="every rank must call new_group for every group, in the same order, also for the groups it "
                "is not a member of: create all of them on every rank and keep the one it belongs to "
                "(dist.new_subgroups does), or pass use_local_synchronization=True",
                cause="collective-mismatch",
                rank=odd[0],
                confidence=0.95,
                explains=_GROUP_CONSEQUENCES,
            )
        ]
    return []


#: A rank that went on without creating a group its peers created.
_NOT_CREATED = object()
#: What ranks that share one group's name and store keys then show.
_GROUP_CONSEQUENCES = (*ECHOES, "collective-timeout", "peer-connection-lost", "late-rank", "rank-left-early")


def _members(chosen: Any) -> str:
    return "a group of every rank" if chosen is None else f"group {list(chosen)}"


def _signature(call: dict[str, Any]) -> tuple[Any, ...]:
    """What the ranks of one collective must agree on (lists made hashable)."""
    return call["op"], _frozen(call.get("shapes")), _frozen(call.get("dtypes")), call.get("objects")


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def _mismatch_in(group: Group, calls: dict[int, list[dict[str, Any]]]) -> tuple[float, Finding] | None:
    """(time, finding) of the first call at which the members of ``group`` disagree, or None."""
    if len(calls) < 2:
        return None
    longest = max(len(c) for c in calls.values())
    for index in range(longest):
        seen = {rank: _signature(c[index]) if index < len(c) else None for rank, c in calls.items()}
        if len(set(seen.values())) == 1:
            continue
        odd = _odd_ranks(calls, seen, index)
        evidence = []
        for rank in sorted(seen):
            call = calls[rank][index] if index < len(calls[rank]) else None
            described = _describe(call) if call else "none (never called)"
            evidence.append(f"rank {rank} collective #{index + 1}: {described}")
        blame = odd[0]
        call = calls[blame][index] if index < len(calls[blame]) else None
        line = call["caller"] if call else _last_caller(calls[blame])
        user = call.get("user") if call else None
        where = f" at {line}" + (f" (called from {user})" if user else "") if line else ""
        among = f" in process group {list(group)}" if group is not None else ""
        when = min((c[index].get("t", 0.0) for c in calls.values() if index < len(c)), default=0.0)
        return when, Finding(
            kind="ranks",
            severity="failure",
            title=f"rank {blame} issued a different collective (#{index + 1}{among}) than its peers{where}",
            evidence=evidence,
            hint="every rank must issue the same collectives in the same order with the same shapes; "
            "move rank-specific work (logging, eval, saving) outside collectives or guard all ranks alike",
            cause="collective-mismatch",
            rank=blame,
            confidence=0.95,
        )
    return None


def _describe(call: dict[str, Any]) -> str:
    what = f"{call['op']} {call.get('shapes')}"
    if call.get("dtypes"):
        what += f" {'/'.join(call['dtypes'])}"
    if call.get("objects") is not None:
        what += f" ({call['objects']} objects)"
    return what + f" at {call.get('caller')}" + (f" (called from {call['user']})" if call.get("user") else "")


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


@dataclass(frozen=True)
class _Transfer:
    """One side of a point-to-point transfer: ``rank`` sends to or receives from ``peer``."""

    rank: int
    direction: str  # "send" or "recv"
    peer: int | None  # None: a receive from any source
    tag: Any
    size: int | None  # elements, None where unknown (objects)
    caller: str | None
    t: float  # when it was issued (the probe's clock)


def _transfers(events: dict[int, list[dict[str, Any]]]) -> list[_Transfer]:
    """Every send and receive in each rank's order, ``batch_isend_irecv`` unpacked."""
    out = []
    for rank, evs in events.items():
        for event in evs:
            if event["kind"] != "collective" or event.get("op") not in _POINT_TO_POINT:
                continue
            if event["op"] == "batch_isend_irecv":
                ops = event.get("ops", [])
                parts = [(op.get("dir"), op.get("peer"), op.get("tag", 0), op.get("shape")) for op in ops]
            else:
                shapes = event.get("shapes") or [None]
                parts = [(event.get("dir"), event.get("peer"), event.get("tag", 0), shapes[0])]
            for direction, peer, tag, shape in parts:
                if direction in ("send", "recv"):
                    known = isinstance(shape, list) and all(isinstance(n, int) for n in shape)
                    size = math.prod(shape) if known else None
                    out.append(_Transfer(rank, direction, peer, tag, size, event.get("caller"), event.get("t", 0.0)))
    return out


def _point_to_point(events: dict[int, list[dict[str, Any]]], status: str) -> list[Finding]:
    """Sends and receives pair up as torch's backends pair them: between two ranks (and a tag)
    in the order they were issued; each receive, in the receiver's order, takes the next send
    from its source, or (a receive from any source) the earliest waiting send from any rank,
    one of the size it expects first. A send nobody received, a receive nobody sent, or a pair
    of different sizes is the finding (where a job hung: the rank that waits)."""
    queues: dict[tuple[int, Any], dict[int, list[_Transfer]]] = {}  # (receiver, tag) -> sender -> sends
    receives: dict[tuple[int, Any], list[_Transfer]] = {}
    for t in _transfers(events):
        if t.direction == "send" and t.peer in events:
            queues.setdefault((t.peer, t.tag), {}).setdefault(t.rank, []).append(t)
        elif t.direction == "recv" and (t.peer is None or t.peer in events):
            receives.setdefault((t.rank, t.tag), []).append(t)
    evidence: list[str] = []
    culprit: _Transfer | None = None
    for key in sorted(set(queues) | set(receives), key=str):
        waiting = queues.get(key, {})
        for b in receives.get(key, []):
            heads = [q[0] for q in waiting.values() if q]
            if b.peer is not None:
                heads = [a for a in heads if a.rank == b.peer]
            else:
                fitting = [a for a in heads if a.size is None or b.size is None or a.size == b.size]
                heads = sorted(fitting or heads, key=lambda a: a.t)
            if not heads:
                source = f"rank {b.peer}" if b.peer is not None else "any rank"
                evidence.append(f"rank {b.rank} receives from {source} at {b.caller}: nothing was sent to it")
                culprit = culprit or b
                continue
            a = waiting[heads[0].rank].pop(0)
            if a.size is not None and b.size is not None and a.size != b.size:
                evidence.append(
                    f"rank {a.rank} sends {a.size} elements at {a.caller}; "
                    f"rank {b.rank} receives {b.size} at {b.caller}"
                )
                culprit = culprit or b
        for queue in waiting.values():
            for a in queue:
                evidence.append(f"rank {a.rank} sends to rank {a.peer} at {a.caller}: rank {a.peer} never receives it")
                culprit = culprit or a
    if culprit is None:
        return []
    severity: Severity = "divergence" if status == "succeeded" else "failure"
    return [
        Finding(
            kind="ranks",
            severity=severity,
            title=f"point-to-point transfers do not pair up: rank {culprit.rank} "
            + ("sends" if culprit.direction == "send" else "receives")
            + (f" at {culprit.caller}" if culprit.caller else ""),
            evidence=evidence[:12],
            hint="every send needs the matching recv on its peer, in the same order between the two ranks and "
            "of the same size; a recv nobody sends to waits until the process group's timeout",
            cause="p2p-mismatch",
            rank=culprit.rank,
            confidence=0.75,
        )
    ]


def _parameter_drift(events: dict[int, list[dict[str, Any]]]) -> list[Finding]:
    """Replicas whose parameters differ at the same optimizer step. Sharded parameters (FSDP,
    DTensor: :func:`harness.judge.model.shards_parameters`) differ across ranks by design: not
    compared."""
    if shards_parameters(events):
        return []
    params = {
        rank: {e["step"]: e for e in evs if e["kind"] == "params" and not e.get("sharded")}
        for rank, evs in events.items()
    }
    params = {rank: p for rank, p in params.items() if p}
    if len(params) < 2:
        return []
    common = sorted(set.intersection(*(set(p) for p in params.values())))
    for step in common:
        by_rank = {rank: p[step] for rank, p in params.items()}
        if len({e["digest"] for e in by_rank.values()}) > 1:
            return [
                Finding(
                    kind="ranks",
                    severity="divergence",
                    title=f"parameters differ across ranks from optimizer step {step}",
                    evidence=[
                        f"rank {rank}: sum={e['sum']:.9g} abs_sum={e['abs_sum']:.9g}"
                        for rank, e in sorted(by_rank.items())
                    ],
                    hint="replicas drift apart when gradients are not all-reduced (no DDP wrapper, a forward that "
                    "bypasses it such as model.module(...) or another method of the module, no_sync() left on, "
                    "a parameter updated outside the optimizer) or when ranks start from different seeds",
                    step=step,
                    cause="parameter-drift",
                    confidence=0.8,
                    # ranks that apply different updates make a replay against one process, the
                    # curves and the saved weights differ as consequences
                    explains=("replay-differs", "learning-differs", "weights-differ"),
                )
            ]
    return []


def _hyperparameters(record: RunRecord, processes: list[dict[str, Any]]) -> list[Finding]:
    """What the script's parser made of each hyperparameter, in every process that runs the
    entry point (every rank), never a launcher's own parser (torchrun's, accelerate's)."""
    given = record.manifest.job.hyperparameters
    if not given:
        return []
    parsers = _script_parsers(record, processes)
    differ: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for process in parsers:
        parsed = process["parsed_args"]
        for key, value in given.items():
            name = key.replace("-", "_")
            if name in parsed and not _same(value, parsed[name]):
                differ.setdefault((key, repr(parsed[name])), []).append(process)
    if not differ:
        return []
    evidence = []
    for (key, _), found in differ.items():
        value, parsed = given[key], found[0]["parsed_args"][key.replace("-", "_")]
        ranks = sorted({str(p["rank"]) for p in found if p.get("rank") is not None}, key=lambda r: (len(r), r))
        evidence.append(
            f"{key}: the job gave {value!r} ({type(value).__name__}), "
            f"the script parsed {parsed!r} ({type(parsed).__name__})"
            + (f" on rank{'s' if len(ranks) > 1 else ''} {', '.join(ranks)}" if ranks else "")
        )
    keys = {key for key, _ in differ}
    return [
        Finding(
            kind="hyperparameters",
            severity="divergence",
            title=f"{len(keys)} hyperparameters changed on the way into the script",
            evidence=evidence,
            hint="SageMaker passes every hyperparameter as a string (booleans as 'True'/'False' by the toolkit, "
            "'true'/'false' by ModelTrainer); argparse type=bool turns any non-empty string into True: "
            "parse booleans explicitly",
            cause="hyperparameter-type",
            confidence=0.85,
        )
    ]


def _script_parsers(record: RunRecord, processes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The processes whose parsed arguments are the script's: those that run the entry point
    (its path ends the process's script path: ``train.py`` under ``torchrun``, under
    ``python -m torch.distributed.run``, in a script that spawns its own ranks). Where none does
    (a shell entry point that runs Python, an image's ``train``), every process that parsed its
    command line and is no launcher (a console script or module of an installed package)."""
    parsed = [p for p in processes if isinstance(p.get("parsed_args"), dict) and p["parsed_args"]]
    entry = PurePosixPath(record.manifest.job.entry_point or "train").parts
    running = [p for p in parsed if entry and _script(p)[-len(entry) :] == entry]
    return running or [p for p in parsed if not _launcher(p)]


def _script(process: dict[str, Any]) -> tuple[str, ...]:
    """The path parts of the script a process runs (``sys.argv[0]``; a ``-m`` module's file)."""
    where = process.get("parsed_in") or (process.get("argv") or [None, None])[1:2][0]
    return PurePosixPath(where).parts if isinstance(where, str) and where not in ("-c", "-m", "-") else ()


def _launcher(process: dict[str, Any]) -> bool:
    """A process that runs an installed program: a console script beside its interpreter
    (``bin/torchrun``, ``bin/accelerate``) or a module inside an installed package."""
    script = _script(process)
    if not script:
        return False
    if any(part in ("site-packages", "dist-packages") for part in script):
        return True
    argv = process.get("argv") or []
    interpreter = PurePosixPath(str(argv[0])).parent.parts if argv else ()
    return bool(interpreter) and script[:-1] == interpreter


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
                kind="ranks",
                severity="divergence",
                title=f"{len(shared)} model files written by more than one rank",
                evidence=[f"{Path(path).name}: ranks {sorted(ranks)}" for path, ranks in sorted(shared.items())[:10]],
                hint="save from global rank 0 only (if dist.get_rank() == 0), or give each rank its own file name",
                cause="model-written-by-several-ranks",
                confidence=0.85,
            )
        )
    if outside:
        findings.append(
            Finding(
                kind="ranks",
                severity="note",
                title=f"{len(outside)} files written outside the SageMaker contract paths",
                evidence=[f"{path}: ranks {sorted(ranks)}" for path, ranks in sorted(outside.items())[:10]],
                hint="only /opt/ml/model, /opt/ml/output and /opt/ml/checkpoints survive a SageMaker job",
                cause="writes-outside-contract",
                confidence=0.4,
            )
        )
    return findings
