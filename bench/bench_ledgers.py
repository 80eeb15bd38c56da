"""What the ledgers cost: per optimizer step, paired against the probe without them, and the size
of one epoch's data ledger at 10 million samples.

    python bench/bench_ledgers.py [--base COMMIT] [--pairs N] [--steps N]

* **Per step**: one training loop (the reference job's model and batch, two ranks on gloo) is
  run under the probe of ``--base`` (a commit before the ledgers, checked out into a temporary
  worktree) and of this tree, alternately, ``--pairs`` times; each run times its own loop, so
  start-up is left out. Printed: each side's median microseconds per step, and the median of the
  pairwise ratios; and, less noisy, the microseconds per step rank 0 spent in the probe's own
  work on the job's thread (each call it makes through ``_quietly``, timed inside the process;
  the hooks' thin wrappers around those calls are not in it).
* **Size**: the data ledger's ``data_epoch`` event of one rank of 4 drawing its shard of a
  shuffled 10-million-sample dataset in batches of 1,024 (the probe's own ``_Epoch``), and the
  time it adds per batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BEFORE_LEDGERS = "fe13c01"
WORLD = 2

LOOP = """
import os, sys, tempfile, threading, time
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=world)
torch.manual_seed(0)
data = TensorDataset(torch.randn(1024, 8), torch.randn(1024, 1))
sampler = DistributedSampler(data, shuffle=True)
loader = DataLoader(data, batch_size=16, sampler=sampler)
model = DistributedDataParallel(torch.nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
steps, epoch, start = int(sys.argv[1]), 0, None
done = 0
# The probe's own work on this thread: every call it makes through _quietly, timed.
probe, inside, depth = sys.modules.get("_harness_probe"), [0.0], [0]
if probe is not None:
    quietly, job_thread = probe._quietly, threading.current_thread()

    def timed(what, function, *args, **kwargs):
        if depth[0] or threading.current_thread() is not job_thread:
            return quietly(what, function, *args, **kwargs)
        depth[0], begun = 1, time.perf_counter()
        try:
            return quietly(what, function, *args, **kwargs)
        finally:
            inside[0] += time.perf_counter() - begun
            depth[0] = 0

    probe._quietly = timed
while done < steps:
    sampler.set_epoch(epoch)
    for x, y in loader:
        if done == 50:
            start, inside[0] = time.perf_counter(), 0.0
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        done += 1
        if done == steps:
            break
    epoch += 1
elapsed = (time.perf_counter() - start) / (steps - 50) * 1e6
if rank == 0:
    print(elapsed, inside[0] / (steps - 50) * 1e6)
"""


def _probe_env(probe_dir: Path, record: Path, rank: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARNESS_")}
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        OMP_NUM_THREADS="1",
        HARNESS_PROBE_DIR=str(record),
        HARNESS_HOST="algo-1",
        PYTHONPATH=str(probe_dir),
    )
    return env


def per_step(base: str, pairs: int, steps: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="harness-bench-ledgers-") as scratch:
        tree = Path(scratch) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), base], check=True)
        try:
            script = Path(scratch) / "loop.py"
            script.write_text(textwrap.dedent(LOOP))
            sides = {"without": tree / "harness" / "probe", "with": ROOT / "harness" / "probe"}
            times: dict[str, list[float]] = {"without": [], "with": []}
            inside: dict[str, list[float]] = {"without": [], "with": []}
            for n in range(pairs):
                for side, probe in sides.items():
                    record, store = Path(scratch) / f"{side}-{n}", Path(scratch) / f"store-{side}-{n}"
                    ranks = [
                        subprocess.Popen(
                            [sys.executable, str(script), str(steps), str(store)],
                            env=_probe_env(probe, record, rank),
                            stdout=subprocess.PIPE,
                            text=True,
                        )
                        for rank in range(WORLD)
                    ]
                    outputs = [rank.communicate()[0] for rank in ranks]
                    if any(rank.returncode for rank in ranks):
                        raise SystemExit(f"the loop failed under the probe of {probe}")
                    step_us, probe_us = outputs[0].split()[-2:]
                    times[side].append(float(step_us))
                    inside[side].append(float(probe_us))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    ratios = [w / o for w, o in zip(times["with"], times["without"], strict=True)]
    return {
        "without_us_per_step": statistics.median(times["without"]),
        "with_us_per_step": statistics.median(times["with"]),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "pairs": pairs,
        "probe_us_per_step_inside": {side: statistics.median(values) for side, values in inside.items()},
    }


def ledger_size(samples: int = 10_000_000, world: int = 4, batch: int = 1024) -> dict[str, float]:
    import torch

    sys.path.insert(0, str(ROOT / "harness" / "probe"))
    import _harness_probe as probe

    emitted: dict[str, object] = {}

    class Rank:
        counters = {"steps": 0}

        def emit(self, kind: str, flush: bool = False, **fields: object) -> None:
            emitted.update(kind=kind, line=json.dumps({"kind": kind, **fields}))

    class Iterator:  # what _Epoch reads of a DataLoader iterator
        _dataset_kind = 0
        _sampler_iter = object()
        _index_sampler = type("DistributedSampler", (), {"shuffle": True})()
        _dataset = range(samples)

    probe.RANK = Rank()
    probe.RANK.pid = os.getpid()
    order = torch.randperm(samples, generator=torch.Generator().manual_seed(0))
    shard = order[0::world].tolist()
    epoch = probe._Epoch(Iterator(), {"loader": 0, "site": "train.py:1", "epochs": 0})
    batches = [shard[i : i + batch] for i in range(0, len(shard), batch)]
    start = time.perf_counter()
    for indices in batches:
        epoch.drew(indices)
    per_batch = (time.perf_counter() - start) / len(batches) * 1e6
    epoch.close(finished=True)
    return {
        "samples": samples,
        "ranks": world,
        "batch": batch,
        "us_per_batch": per_batch,
        "event_bytes_per_rank": len(str(emitted["line"])),
        "event_bytes_all_ranks": len(str(emitted["line"])) * world,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=BEFORE_LEDGERS, help="a commit whose probe has no ledgers")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1050)
    args = parser.parse_args()
    result = {"per_step": per_step(args.base, args.pairs, args.steps), "size": ledger_size()}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
