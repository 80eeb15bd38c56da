"""Log analysis throughput: ``harness.judge.logs.check_run`` over 1,000,000 lines from 8 ranks.

    python bench/bench_logs.py [--lines 1000000] [--ranks 8] [--runs 5] [--with-host-logs]

Writes a run record in a temporary directory: ``ranks/rank-N.log`` with the harness's
timestamps, mostly training chatter (step lines, progress bars, NCCL INFO, logging, torch
warnings, a few benign lines holding a catalogue keyword such as "found" or "failed") and, near
the end, a real failure: rank 5 raises, the other ranks print gloo "Connection closed by peer"
tracebacks, torchrun prints its summary. ``--with-host-logs`` also writes the two hosts' launcher
logs, which (as in a real record) repeat every line their ranks printed, so twice the lines are
read. Throughput = rank-log lines / wall seconds of one ``check_run`` (the median of ``--runs``,
files in the page cache, after one warm-up call that also compiles the catalogue).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.judge.logs import check_run  # noqa: E402
from harness.judge.protocol import CheckContext  # noqa: E402
from harness.record.run_record import RunRecord  # noqa: E402

START = dt.datetime(2026, 11, 23, 5, 0, 0, tzinfo=dt.UTC)
CRASH = """[rank5]: Traceback (most recent call last):
[rank5]:   File "/opt/ml/code/train.py", line 117, in <module>
[rank5]:     main()
[rank5]:   File "/opt/ml/code/train.py", line 102, in main
[rank5]:     batch = collate(rows)
[rank5]: ValueError: batch 3 has 17 columns, expected 16"""
ECHO = "\n".join(
    [
        "[rank{r}]: Traceback (most recent call last):",
        '[rank{r}]:   File "/opt/ml/code/train.py", line 91, in main',
        "[rank{r}]:     dist.all_reduce(grad)",
        '[rank{r}]:   File "/usr/local/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py", '
        "line 3252, in all_reduce",
        "[rank{r}]:     work.wait()",
        "[rank{r}]: RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
        "[10.0.1.{r}]:35030. This is typically caused by a remote worker crashing.",
    ]
)
SUMMARY = "\n".join(
    [
        "E1123 05:30:01.210000 6032 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 1) "
        "local_rank: 1 (pid: 6123) of binary: /usr/bin/python3",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:",
        "W1123 05:30:01.174000 6032 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 6126 "
        "closing signal SIGTERM",
    ]
)


def chatter(rank: int, step: int, rng: random.Random) -> str:
    """One line of what a healthy rank prints, in the proportions of a typical job."""
    roll = rng.random()
    if roll < 0.70:
        return (
            f"step={step} loss={rng.random():.6f} lr=0.000500 grad_norm={rng.random() * 3:.4f} "
            f"tokens/s={rng.randrange(20000, 40000)}"
        )
    if roll < 0.80:
        return (
            f"Epoch {step // 10000}/10: {step % 100:3d}%|#####     | {step % 1000}/1000 "
            f"[00:12<00:30, 12.34it/s, loss={rng.random():.4f}]"
        )
    if roll < 0.86:
        return (
            f"algo-{rank // 4 + 1}:{4000 + rank}:{5000 + rank} [{rank % 4}] NCCL INFO Channel {step % 32:02d}/32 :"
            " 0 1 2 3 4 5 6 7"
        )
    if roll < 0.93:
        return (
            f"2026-11-23 05:00:{step % 60:02d},123 - train - INFO - epoch={step // 10000} "
            f"val_loss={rng.random():.5f} accuracy=0.{rng.randrange(1000)}"
        )
    if roll < 0.99:
        return (
            f"[rank{rank}]:[W1123 05:00:00.000000000 reducer.cpp:1400] Warning: find_unused_parameters=True was "
            "specified in DDP constructor, but did not find any unused parameters in the forward pass."
        )
    return rng.choice(["found 8 CUDA devices, using cuda:0", "eval: 0 failed, 1024 passed", "Killed 0 stale workers"])


def _stamp(microseconds: int) -> str:
    return (START + dt.timedelta(microseconds=microseconds)).isoformat(timespec="microseconds").replace("+00:00", "Z")


def write_record(root: Path, lines: int, ranks: int, host_logs: bool) -> int:
    """The record; returns the number of lines written to rank logs."""
    rng, per_rank, total = random.Random(0), lines // ranks, 0
    hosts = [f"algo-{i + 1}" for i in range((ranks + 3) // 4)]
    (root / "ranks").mkdir(parents=True)
    mirrors = {h: (root / "hosts" / h / "log.txt") for h in hosts}
    for path in mirrors.values():
        path.parent.mkdir(parents=True)
    for rank in range(ranks):
        tail = (CRASH if rank == 5 else ECHO.format(r=rank)).split("\n")  # the echoes a second after the crash
        body = [chatter(rank, step, rng) for step in range(per_rank - len(tail))]
        stamps = [_stamp(i * 1700 + rank) for i in range(len(body))]
        stamps += [_stamp(len(body) * 1700 + (0 if rank == 5 else 1_000_000) + i) for i in range(len(tail))]
        text = "".join(f"{s} {line}\n" for s, line in zip(stamps, body + tail, strict=True))
        (root / "ranks" / f"rank-{rank}.log").write_text(text)
        total += len(body) + len(tail)
        if host_logs:
            with mirrors[hosts[rank // 4]].open("a") as handle:
                handle.write(text)
    for host in hosts:
        with mirrors[host].open("a") as handle:
            handle.write("".join(f"2026-11-23T05:30:01.300Z {line}\n" for line in SUMMARY.split("\n")))
    manifest = {
        "format_version": 1,
        "harness_version": "bench",
        "run_id": root.name,
        "rung": "bench",
        "job": {},
        "status": "failed",
        "complete": True,
        "topology": {"hosts": hosts, "processes_per_host": 4, "world_size": ranks},
        "hosts": {h: {"exit_code": 1} for h in hosts},
        "ranks": {str(r): {"host": hosts[r // 4], "local_rank": r % 4} for r in range(ranks)},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--with-host-logs", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as tmp:
        root = Path(tmp) / "record"
        lines = write_record(root, args.lines, args.ranks, args.with_host_logs)
        size = sum(p.stat().st_size for p in root.rglob("*.log")) + sum(p.stat().st_size for p in root.rglob("log.txt"))
        record = RunRecord.load(root)
        findings = check_run(record, CheckContext())  # warm-up: page cache, catalogue
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            check_run(record, CheckContext())
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(
            f"{lines:,} rank-log lines over {args.ranks} ranks ({size / 1e6:.0f} MB read per run"
            f"{', host logs included' if args.with_host_logs else ''})"
        )
        print(
            f"check_run: median {median * 1000:.0f} ms of {args.runs} (min {min(times) * 1000:.0f}, "
            f"max {max(times) * 1000:.0f}) = {lines / median:,.0f} lines/s"
        )
        print(f"found: {findings[0].title} [{findings[0].cause}]" if findings else "found: nothing")


if __name__ == "__main__":
    main()
