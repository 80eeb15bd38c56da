"""What the probe adds to the start of one process: a rank that imports torch, joins a process
group of one, makes one all-reduce and exits, with the probe and without it.

    python bench/bench_probe_startup.py [--pairs N] [--base GIT_REF]

The two sides of a pair run at the same time, each on a CPU of its own (they swap CPUs every
pair), so that what slows the machine down at that moment slows both: on a shared machine whose
speed drifts by a third from one second to the next, timing them one after the other could not
tell a few per cent apart (an A/A control of this bench: 1.00, 0.92 to 1.09).
Two kinds of process: a host's first (it writes the host's fingerprint: installed packages,
platform) and any other (the fingerprint is there already: every rank after a host's launcher).
``--base`` times this probe against the probe of an earlier commit instead of against no probe.
The CPU figures count the output tee: this process is the subreaper of what its children leave
behind, so the tee, which detaches, is reaped and counted here, on the side that started it.
Prints, for wall and CPU seconds: the median of each side, the median of the per-pair
differences in milliseconds and the median ratio with its range.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import py_compile
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.util import cache_from_source
from pathlib import Path

from harness.backends.hosts import PROBE_DIR, compiled_probe

RANK_SCRIPT = """
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
tensor = torch.ones(4)
dist.all_reduce(tensor)
dist.destroy_process_group()
"""
_PR_SET_CHILD_SUBREAPER = 36
#: A fingerprint an earlier process of the host wrote: the rank then writes none of its own.
_WRITTEN_FINGERPRINT = json.dumps({"python": "written by an earlier process"})


@dataclass
class Side:
    """One side of the pairs: the probe it runs (None: none) and whether it is a host's first."""

    probe: Path | None
    first: bool
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float) -> None:
        self.walls.append(wall)
        self.cpus.append(cpu)


def _become_subreaper() -> None:
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("this bench needs Linux (prctl PR_SET_CHILD_SUBREAPER), to count the tee's CPU")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(side: Side, script: Path, work: Path, cpu: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",  # one CPU each
    }
    for name in ("HARNESS_PROBE_DIR", "HARNESS_HOST"):
        env.pop(name, None)
    if side.probe is not None:
        record = Path(tempfile.mkdtemp(dir=work))
        if not side.first:
            (record / "hosts" / "algo-1").mkdir(parents=True)
            (record / "hosts" / "algo-1" / "fingerprint.json").write_text(_WRITTEN_FINGERPRINT, encoding="utf-8")
        env.update(PYTHONPATH=str(side.probe), HARNESS_PROBE_DIR=str(record), HARNESS_HOST="algo-1")
    return subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdout=subprocess.DEVNULL,
        cwd=work,
        start_new_session=True,  # its process group: the tee it leaves behind is told apart by it
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )


def run_pair(
    sides: tuple[Side, Side], script: Path, work: Path, cpus: tuple[int, int]
) -> tuple[list[float], list[float]]:
    """Both sides at once: each side's wall time (to its rank's exit) and CPU (its rank and the
    tee the rank left behind)."""
    began = time.perf_counter()
    procs = [_start(side, script, work, cpu) for side, cpu in zip(sides, cpus, strict=True)]
    group_of = {proc.pid: index for index, proc in enumerate(procs)}
    walls, cpu_s = [0.0, 0.0], [0.0, 0.0]
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            break
        assert info is not None
        index = group_of.get(os.getpgid(info.si_pid))
        _, status, usage = os.wait4(info.si_pid, 0)
        if index is None:
            continue
        cpu_s[index] += usage.ru_utime + usage.ru_stime
        if info.si_pid == procs[index].pid:
            walls[index] = time.perf_counter() - began
            if os.waitstatus_to_exitcode(status) != 0:
                sys.exit(f"the rank exited with {os.waitstatus_to_exitcode(status)}")
    return walls, cpu_s


def probe_at(ref: str, work: Path) -> Path:
    """The probe as it was at git ``ref``, compiled."""
    target = work / f"probe-{ref}"
    target.mkdir()
    for name in ("_harness_probe.py", "sitecustomize.py"):
        path = f"{PROBE_DIR.relative_to(PROBE_DIR.parents[1])}/{name}"
        source = subprocess.run(
            ["git", "show", f"{ref}:{path}"], cwd=PROBE_DIR, check=True, capture_output=True, text=True
        ).stdout
        (target / name).write_text(source, encoding="utf-8")
        py_compile.compile(str(target / name), cfile=cache_from_source(str(target / name)), doraise=True)
    return target


def _summary(name: str, a: list[float], b: list[float]) -> str:
    differences = [1000 * (x - y) for x, y in zip(a, b, strict=True)]
    ratios = sorted(x / y for x, y in zip(a, b, strict=True))
    return (
        f"{name:<5} {statistics.median(a):7.3f} s  {statistics.median(b):7.3f} s  "
        f"{statistics.median(differences):+7.1f} ms  "
        f"{statistics.median(ratios):.3f} ({ratios[0]:.3f} to {ratios[-1]:.3f})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--base", help="a git ref: time against its probe instead of none")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("this bench runs the two sides of a pair at once, on two CPUs: it has fewer")
    _become_subreaper()
    cpus = tuple(sorted(os.sched_getaffinity(0))[:2])
    with tempfile.TemporaryDirectory(prefix="harness-bench-startup-") as tmp:
        work = Path(tmp)
        script = work / "rank.py"
        script.write_text(RANK_SCRIPT, encoding="utf-8")
        probe = compiled_probe()
        base = probe_at(args.base, work) if args.base else None
        pairs = {first: (Side(probe, first), Side(base, first)) for first in (True, False)}
        for sides in pairs.values():  # warm-up: the page cache, torch's own caches
            run_pair(sides, script, work, (cpus[0], cpus[1]))
        for number in range(args.pairs):
            for sides in pairs.values():
                walls, cpu_s = run_pair(sides, script, work, (cpus[number % 2], cpus[1 - number % 2]))
                for index, side in enumerate(sides):
                    side.add(walls[index], cpu_s[index])
    against = f"the probe at {args.base}" if args.base else "no probe"
    print(f"one rank's start (import torch, a group of one, one all-reduce, exit), this probe against {against}")
    print(f"{args.pairs} pairs, the two sides of each at once on CPUs {cpus[0]} and {cpus[1]}; the tee's CPU counted")
    print("process           what  this probe  other     difference  ratio, median (min to max)")
    for first, (mine, theirs) in pairs.items():
        title = "a host's first" if first else "any other"
        print(f"{title:<17} {_summary('wall', mine.walls, theirs.walls)}")
        print(f"{title:<17} {_summary('cpu', mine.cpus, theirs.cpus)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
