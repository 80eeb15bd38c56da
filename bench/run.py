"""The benchmark: what the harness costs, measured side by side, printed as one table.

    python bench/run.py [--runs N] [--quick]

Ratios against the bare equivalent are what to read (stable on a noisy machine); every number
is the median of ``--runs`` runs. Sections need what they measure: the docker rows need an
engine, the diff and log rows come from bench_diff.py and bench_logs.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from harness.backends import get_backend
from harness.spec.job import JobSpec, load_job

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "scenarios" / "ddp_csv" / "job.yaml"


def median_time(action: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bare_torchrun(job: JobSpec, work: Path) -> None:
    """The same job, launched the way an engineer would by hand: one torchrun per host on
    loopback, with only the variables the script reads."""
    model = work / "model"
    model.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {
        **os.environ,
        "SM_CHANNEL_TRAIN": job.channels["train"].source,
        "SM_MODEL_DIR": str(model),
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONUNBUFFERED": "1",
    }
    argv_tail = [token for key, value in job.hyperparameters.items() for token in (f"--{key}", str(value))]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                str(job.instance_count),
                "--nproc_per_node",
                str(job.processes_per_host),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                "--node_rank",
                str(rank),
                str(job.source_dir / job.entry_point),
                *argv_tail,
            ],  # type: ignore[operator]
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=work,
        )
        for rank in range(job.instance_count)
    ]
    codes = [p.wait() for p in procs]
    assert codes == [0] * len(procs), codes


def bare_docker(job: JobSpec, image: str) -> list[float]:
    """The same job as plain ``docker run``s of the same image on a user network: what a team
    would script by hand. Returns each container's start time (create + start, seconds)."""
    import docker

    client = docker.from_env()
    network = client.networks.create(f"bench-{os.getpid()}-{time.monotonic_ns()}")
    argv_tail = [token for key, value in job.hyperparameters.items() for token in (f"--{key}", str(value))]
    containers, starts = [], []
    try:
        for rank, host in enumerate(job.hosts):
            began = time.perf_counter()
            container = client.containers.create(
                image,
                name=f"{network.name}-{host}",
                hostname=host,
                network=network.name,
                command=[
                    "torchrun",
                    "--nnodes",
                    str(job.instance_count),
                    "--nproc_per_node",
                    str(job.processes_per_host),
                    "--master_addr",
                    job.hosts[0],
                    "--master_port",
                    "7777",
                    "--node_rank",
                    str(rank),
                    f"/code/{job.entry_point}",
                    *argv_tail,
                ],
                environment={"SM_CHANNEL_TRAIN": "/data", "SM_MODEL_DIR": "/tmp", "PYTHONUNBUFFERED": "1"},
                volumes={
                    str(job.source_dir): {"bind": "/code", "mode": "ro"},
                    job.channels["train"].source: {"bind": "/data", "mode": "ro"},
                },
                shm_size="1g",
            )
            container.start()
            starts.append(time.perf_counter() - began)
            containers.append(container)
        codes = [c.wait()["StatusCode"] for c in containers]
        assert codes == [0] * len(codes), codes
    finally:
        for container in containers:
            container.remove(force=True)
        network.remove()
    return starts


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_rung(rung: str, job: JobSpec, records: Path, **options: object) -> None:
    record = get_backend(rung, **options).run(job, records)
    assert record.status == "succeeded", record.root


def scaled(job: JobSpec, world: int) -> JobSpec:
    hosts = 2 if world >= 2 else 1
    return job.model_copy(update={"instance_count": hosts, "processes_per_host": world // hosts})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip the world-size sweep")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON")
    args = parser.parse_args()
    job = load_job(REFERENCE)
    rows: list[tuple[str, str, str]] = []
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
        work = Path(tmp)
        bare = median_time(lambda: bare_torchrun(job, work / "bare"), args.runs)
        rung = median_time(lambda: run_rung("local", job, work / "records"), args.runs)
        no_probe = median_time(lambda: run_rung("local", job, work / "records", probe=False), args.runs)
        results.update(bare_torchrun_s=bare, local_rung_s=rung, local_rung_no_probe_s=no_probe)
        rows += [
            ("bare torchrun, 2 hosts x 2 procs (s)", f"{bare:.2f}", ""),
            ("local rung, same job (s)", f"{rung:.2f}", f"{rung / bare:.3f}x bare (target <= 1.10x)"),
            (
                "local rung without probe (s)",
                f"{no_probe:.2f}",
                f"probe overhead {100 * (rung / no_probe - 1):+.1f}% (target <= 3%)",
            ),
        ]
        if get_backend("docker").unavailable_reason() is None:
            from harness.backends.containers import client
            from harness.runtime.images import ensure_torch_image

            image = ensure_torch_image(client())  # warm image: built before anything is timed
            starts: list[float] = []
            bare_docker_s = median_time(lambda: starts.extend(bare_docker(job, image)), args.runs)
            docker = median_time(lambda: run_rung("docker", job, work / "records"), args.runs)
            results.update(
                bare_docker_s=bare_docker_s, docker_rung_s=docker, container_start_s=statistics.median(starts)
            )
            rows += [
                ("bare docker run, 2 containers (s)", f"{bare_docker_s:.2f}", ""),
                (
                    "docker rung, same job (s)",
                    f"{docker:.2f}",
                    f"{docker / bare_docker_s:.3f}x bare docker (target <= 1.3x)",
                ),
                ("container create+start per host (s)", f"{statistics.median(starts):.2f}", "bare docker"),
            ]
        if not args.quick:
            from harness.ladder.climbing import climb

            started = time.perf_counter()
            ladder = climb(job, work / "records")
            results["ladder_s"] = time.perf_counter() - started
            rows.append(
                (
                    f"ladder over {', '.join(r.rung for r in ladder.records)} (s)",
                    f"{results['ladder_s']:.2f}",
                    f"verdict {ladder.verdict.outcome}; skipped: {', '.join(ladder.skipped) or 'none'}",
                )
            )
            for lines in (0, 100, 1000):
                noisy = job.model_copy(update={"hyperparameters": {**job.hyperparameters, "log-lines-per-step": lines}})
                seconds = median_time(lambda j=noisy: run_rung("local", j, work / "records"), args.runs)
                results[f"local_log_lines_{lines}_s"] = seconds
                total = lines * 64 * job.world_size
                rows.append((f"local rung, {total:,} extra log lines (s)", f"{seconds:.2f}", ""))
            for world in (2, 4, 8):
                seconds = median_time(lambda w=world: run_rung("local", scaled(job, w), work / "records"), args.runs)
                results[f"local_world_{world}_s"] = seconds
                rows.append((f"local rung, world size {world} (s)", f"{seconds:.2f}", ""))
        shutil.rmtree(work / "records", ignore_errors=True)
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"median of {args.runs} runs"
    )
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name.ljust(width)}  {value:>8}  {note}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
