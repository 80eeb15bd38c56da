"""How judging grows with the number of ranks: records of 8, 64 and 512 ranks, synthesised from a
real run, judged and reported.

    python bench/bench_scale.py [--ranks 8 64 512] [--steps 256] [--samples 1048576] [--template RECORD]

A real record of the reference job (2 hosts x 2 processes on ``local``, run here unless
``--template`` names one) gives every file its real shape. Each synthetic record has 8 ranks a
host; rank r takes the files of template rank r % 4, with what must differ per rank made so: its
data ledger (the strided shard r of N of a ``--samples`` dataset, as ``DistributedSampler`` cuts
it: an exact bitmap), its batch digests and order, its process record, its host. Every rank runs
``--steps`` optimizer steps, each an all-reduce, so the collective sequences grow with the
steps as in a real job. Two such records, baseline and candidate, are judged together
(``harness.judge.verdict.judge``, every check) and reported (text, JSON, HTML); with ``--fault`` the
candidate's last rank issues a broadcast where its peers all-reduce, so the verdict has a
finding to rank and report. Printed: per rank
count, the seconds of writing, judging and reporting, the verdict, and the growth from the
previous row against the growth of ranks (linear: equal).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import report  # noqa: E402
from harness.judge.verdict import judge  # noqa: E402
from harness.record.run_record import RunRecord  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PER_HOST = 8
BATCH = 16


def _template(scratch: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "harness", "run", str(ROOT / "scenarios" / "ddp_csv" / "job.yaml"), "--rung", "local"]
        + ["--records", str(scratch / "template")],
        check=True,
        capture_output=True,
    )
    return next((scratch / "template").iterdir())


def _bitmap(rank: int, world: int, length: int) -> str:
    """Samples rank, rank + world, ... of ``length``: 8 a byte, compressed as the probe packs them."""
    bits = bytearray(length // 8 + (length % 8 > 0))
    for index in range(rank, length, world):
        bits[index // 8] |= 1 << (index % 8)
    return base64.b64encode(zlib.compress(bytes(bits), 6)).decode()


def _digest(*parts: object) -> str:
    return hashlib.blake2b(repr(parts).encode(), digest_size=12).hexdigest()


def _rank_events(
    template: list[dict[str, Any]], rank: int, world: int, steps: int, samples: int, odd: bool = False
) -> list[str]:
    """The template rank's events made rank ``rank``'s, with ``steps`` steps of one all-reduce each;
    ``odd``: its last collective is a broadcast where its peers all-reduce."""
    head = [e for e in template if e["kind"] in ("dist_init", "model")]
    collective = next(e for e in template if e["kind"] == "collective")
    epoch = next(e for e in template if e["kind"] == "epoch_start")
    data = next(e for e in template if e["kind"] == "data_epoch")
    share = samples // world
    events: list[dict[str, Any]] = [*head, {**epoch, "length": samples}]
    for step in range(steps):
        events.append({"t": 0.0, "kind": "batch", "n": step + 1, "digest": _digest(rank, step), "size": BATCH,
                       "loader": 0, "epoch": 0, "i": step + 1, "step": step})  # fmt: skip
        events.append({**collective, "seq": step + 1, **({"op": "broadcast"} if odd and step == steps - 1 else {})})
    events.append({
        **data, "length": samples, "batches": steps, "samples": share, "steps": steps,
        "order": _digest("order", rank), "first": list(range(rank, rank + 8 * world, world)),
        "bitmap": _bitmap(rank, world, samples),
    })  # fmt: skip
    losses = [1.0 / (1 + s) for s in range(steps)]
    for start in range(0, steps, 64):
        window = range(start, min(steps, start + 64))
        events.append({"t": 0.0, "kind": "steps", "step": list(window), "loss": [losses[s] for s in window],
                       "backwards": [1] * len(window), "samples": [BATCH] * len(window),
                       "grad_norm": [1.0] * len(window), "lr": [0.05] * len(window)})  # fmt: skip
    return [json.dumps(e) for e in events]


def synthesise(template: Path, out: Path, world: int, steps: int, samples: int, fault: bool = False) -> Path:
    """A record of ``world`` ranks in the shape of ``template`` (see the module docstring);
    ``fault``: the last rank's last collective differs from its peers'."""
    shutil.copytree(template, out, ignore=shutil.ignore_patterns("ranks", "processes", "hosts", "replay"))
    manifest = json.loads((template / "manifest.json").read_text())
    templates = {
        r: [json.loads(line) for line in (template / "ranks" / f"rank-{r}.jsonl").read_text().splitlines()]
        for r in range(4)
    }
    processes = {}
    for path in (template / "processes").glob("*.json"):
        process = json.loads(path.read_text())
        processes[process.get("rank")] = process
    hosts = [f"algo-{h + 1}" for h in range(world // PER_HOST)]
    (out / "ranks").mkdir()
    (out / "processes").mkdir()
    for host in hosts:
        shutil.copytree(template / "hosts" / "algo-1", out / "hosts" / host)
    ranks = {}
    for rank in range(world):
        source, host = rank % 4, hosts[rank // PER_HOST]
        lines = _rank_events(templates[source], rank, world, steps, samples, odd=fault and rank == world - 1)
        (out / "ranks" / f"rank-{rank}.jsonl").write_text("\n".join(lines) + "\n")
        shutil.copy(template / "ranks" / f"rank-{source}.log", out / "ranks" / f"rank-{rank}.log")
        process = {**processes.get(str(source), {}), "host": host, "pid": 10000 + rank, "rank": str(rank)}
        (out / "processes" / f"{host}-{10000 + rank}.json").write_text(json.dumps(process))
        ranks[str(rank)] = {**manifest["ranks"][str(source)], "host": host, "pid": 10000 + rank,
                            "local_rank": str(rank % PER_HOST)}  # fmt: skip
    manifest["job"].update(instance_count=len(hosts), processes_per_host=PER_HOST)
    manifest["ranks"] = ranks
    manifest["hosts"] = {host: manifest["hosts"]["algo-1"] for host in hosts}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 64, 512])
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--samples", type=int, default=1 << 20)
    parser.add_argument("--template", type=Path)
    parser.add_argument("--fault", action="store_true", help="the candidate's last rank issues another collective")
    args = parser.parse_args()
    print("| ranks | write s | judge s | report s | verdict | growth of judge+report (ranks x) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="harness-scale-") as scratch:
        template = args.template or _template(Path(scratch))
        previous: tuple[int, float] | None = None
        for world in args.ranks:
            start = time.perf_counter()
            pair = [
                synthesise(template, Path(scratch) / f"{world}-{side}", world, args.steps, args.samples, fault)
                for side, fault in (("baseline", False), ("candidate", args.fault))
            ]
            records = [RunRecord.load(path) for path in pair]
            written = time.perf_counter() - start
            start = time.perf_counter()
            verdict = judge(records)
            judged = time.perf_counter() - start
            start = time.perf_counter()
            report.to_text(verdict), report.to_json(verdict), report.to_html(verdict)
            reported = time.perf_counter() - start
            total = judged + reported
            growth = "" if previous is None else f"{total / previous[1]:.1f} ({world / previous[0]:.0f})"
            causes = ", ".join(f.cause or "" for f in verdict.findings[:2])
            print(
                f"| {world} | {written:.1f} | {judged:.2f} | {reported:.2f} | {verdict.outcome} {causes} | {growth} |"
            )
            previous = (world, total)
            for path in pair:
                shutil.rmtree(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
