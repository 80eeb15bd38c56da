"""What stopping early and bisecting cost, on the planted faults that depart on a rung below the
top of the default ladder.

    python bench/bench_ladder.py [--rungs single,local,docker,sagemaker-local]

For each fault: the wall time of the ladder climbed to the end (``--keep-going``) and stopped
where it departs, the rungs each ran; then ``harness bisect`` up to docker from the last rung the
fault agrees on (``single`` for the loopback rendezvous, which ``local``'s per-host networks
already catch): runs, wall time, the dimension it names.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.ladder.bisect import bisect
from harness.ladder.climbing import Step, climb
from harness.ladder.scenario import load_scenario
from harness.spec.job import load_job

ROOT = Path(__file__).resolve().parent.parent / "scenarios"
#: Faults and the docker settings their scenario gives the rung they depart on.
FAULTS: dict[str, dict[str, Any]] = {
    "fault_wrapped_checkpoint": {},
    "fault_localhost_rendezvous": {},
    "fault_shm_exhaustion": {"shm_size": "64m"},
}
#: Faults bisected up to docker, and the rung below it that each agrees on.
BISECTED = {"fault_localhost_rendezvous": "single", "fault_shm_exhaustion": "local"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rungs", default="single,local,docker,sagemaker-local")
    rungs = parser.parse_args().rungs.split(",")
    rows = [("fault", "ladder to the end", "stopped where it departs", "bisect")]
    for name, docker_options in FAULTS.items():
        load_scenario(ROOT / name)
        job = load_job(ROOT / name / "job.yaml")
        steps = [Step(rung, docker_options if rung == "docker" else {}) for rung in rungs]
        cells = []
        for keep_going in (True, False):
            with tempfile.TemporaryDirectory(prefix="harness-bench-ladder-") as records:
                started = time.monotonic()
                result = climb(job, Path(records), rungs=steps, keep_going=keep_going)
                cells.append(
                    f"{time.monotonic() - started:.0f} s, {len(result.records)} runs "
                    f"({result.verdict.outcome} @{result.verdict.first_rung})"
                )
        if name in BISECTED:
            with tempfile.TemporaryDirectory(prefix="harness-bench-bisect-") as records:
                started = time.monotonic()
                found = bisect(job, Path(records), lower=BISECTED[name], upper_options=docker_options)
                cells.append(f"{time.monotonic() - started:.0f} s, {2 + len(found.steps)} runs: {found.dimension}")
        else:
            cells.append("-")
        rows.append((name, *cells))
        print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
