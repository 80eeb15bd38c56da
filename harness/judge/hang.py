"""A hung run explained: which ranks were stuck, on which line of the user's code, inside
which call, from the stacks every rank dumped before the harness stopped it."""

from __future__ import annotations

import re

from harness.judge.findings import Finding
from harness.judge.protocol import CheckContext
from harness.record.run_record import RunRecord

_FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')
_LIBRARY = (
    "/torch/",
    "/threading.py",
    "/site-packages/",
    "/dist-packages/",
    "_harness_probe",
    "/multiprocessing/",
    "/lib/python3",
)


def _last_dump(text: str) -> list[tuple[str, int, str]]:
    """Frames (innermost first) of the thread that received the dump in the last dump."""
    blocks = re.split(r"^(?=(?:Current thread|Thread) 0x)", text, flags=re.M)
    current = [b for b in blocks if b.startswith("Current thread")]
    block = current[-1] if current else (blocks[-1] if blocks else "")
    return [(m["file"], int(m["line"]), m["func"]) for m in map(_FRAME.match, block.splitlines()) if m]


def check_run(record: RunRecord, context: CheckContext) -> list[Finding]:
    if record.status != "hung":
        return []
    evidence, stuck = [], []
    lines: dict[str, list[int]] = {}
    waiting_in_library = True  # every rank blocked inside a library call, none in its own code
    beats = record.heartbeats()
    for rank, path in record.rank_stacks().items():
        frames = _last_dump(path.read_text(errors="replace"))
        if not frames:
            continue
        user = next(((f, line, fn) for f, line, fn in frames if not any(lib in f for lib in _LIBRARY)), None)
        innermost = frames[0][2]
        beat = beats.get(rank, {})
        where = f"{user[0]}:{user[1]}" if user else f"{frames[0][0]}:{frames[0][1]}"
        stuck.append(rank)
        waiting_in_library = waiting_in_library and any(lib in frames[0][0] for lib in _LIBRARY)
        if user:
            lines.setdefault(f"{where} in {user[2]}", []).append(rank)
        evidence.append(
            f"rank {rank} stuck at {where} in {innermost} "
            f"(collectives {beat.get('collectives')}, batches {beat.get('batches')})"
        )
    if not stuck:
        if any(isinstance(r := p.get("rendezvous"), dict) and not r.get("joined_at") for p in record.processes()):
            return []  # stuck before any rank existed: the rendezvous check says where (diff.rendezvous)
        return [
            Finding(
                kind="hang",
                severity="failure",
                title="the job stopped making progress (no stacks could be dumped)",
                cause="hang",
                confidence=0.5,
            )
        ]
    if len(lines) > 1 and waiting_in_library:
        return [_waiting_apart(lines, evidence)]
    return [
        Finding(
            kind="hang",
            severity="failure",
            title=f"the job hung: ranks {stuck} made no progress",
            evidence=evidence,
            hint="ranks waiting in different collectives, or some ranks in a collective that others never reach, "
            "hang until the backend's timeout: make every rank issue the same collectives",
            cause="hang",
            confidence=0.7,
        )
    ]


def _waiting_apart(lines: dict[str, list[int]], evidence: list[str]) -> Finding:
    """Ranks hung at different lines of the job's code, each blocked inside a library call, wait
    for each other in different calls: a collective that some ranks issue and others never
    reach, whether or not the probe saw it (a wrapper's own broadcast, issued from C++, such as
    DDP's buffer broadcast in forward). A rank blocked in its own code (a sleep, a loop, a read)
    is a hang of that rank, not a mismatch."""
    groups = sorted(lines.items(), key=lambda item: (-len(item[1]), item[1]))
    shown = "; ".join(
        f"{'rank' if len(r) == 1 else 'ranks'} {', '.join(map(str, r))} at {where}" for where, r in groups
    )
    return Finding(
        kind="hang",
        severity="failure",
        title=f"the ranks hung in different places of the job's code: {shown}",
        evidence=evidence,
        hint="every rank must reach the same collectives in the same order: the line the fewest ranks are at is "
        "usually the branch only they took (a wrapped model's forward issues a collective of its own)",
        cause="collective-mismatch",
        confidence=0.75,
        explains=("hang", "sigterm-of-survivors", "launcher-summary", "job-failed"),
    )
