"""Capture real failure logs as run records: ``python capture.py OUTDIR CASE...``.

Each case runs ``train.py`` (copied to a temporary ``code/`` directory, as a job's source would
be) under real launchers: one torchrun per emulated host (``algo-1``, ``algo-2``) with a static
rendezvous on 127.0.0.1, each rank's output teed into ``ranks/rank-N.log`` and each launcher's
into ``hosts/<host>/log.txt``, with the timestamps the harness writes. The checked-in records
under this directory were made with it (the manifest says by which torch, where); the slow
tests run it again to catch a torch release that changes its messages.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).resolve().parent
DETAIL = {"TORCH_DISTRIBUTED_DEBUG": "DETAIL"}
SMALL_SHM = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$@"', "sh"]
ROOT_OWNED_OPT_ML = [
    "unshare",
    "-m",
    "sh",
    "-c",
    'mount -t tmpfs -o mode=755 tmpfs /opt && mkdir -p /opt/ml/model && exec "$@"',
    "sh",
]


class Case(NamedTuple):
    hosts: int
    nproc: int
    mode: str
    env: dict[str, str] = {}
    wrapper: list[str] = []  # put before each host's launcher command
    launcher: str = "torchrun"  # or "bash": what an image without python runs
    timeout_s: float = 90


CASES: dict[str, Case] = {
    "success": Case(2, 2, "train"),
    "crash": Case(2, 2, "crash"),
    "mismatch-op": Case(2, 2, "mismatch-op"),
    "mismatch-op-detail": Case(2, 2, "mismatch-op", DETAIL),
    "mismatch-size": Case(1, 2, "mismatch-size"),
    "mismatch-size-detail": Case(2, 2, "mismatch-size", DETAIL),
    "straggle": Case(2, 2, "straggle"),
    "straggle-detail": Case(2, 2, "straggle", DETAIL),
    "exit-early": Case(2, 2, "exit-early"),
    "oom-cpu": Case(1, 2, "oom-cpu"),
    "dl-killed": Case(1, 1, "dl-killed"),
    "nccl-cpu": Case(1, 2, "nccl-train"),
    "unresolvable": Case(2, 1, "train", {"CAPTURE_MASTER_ADDR": "algo-9"}, timeout_s=25),
    # Need root: a private mount namespace.
    "shm": Case(1, 1, "shm", wrapper=SMALL_SHM),
    "shm-bus": Case(1, 1, "shm-bus", wrapper=SMALL_SHM),
    "perm": Case(1, 1, "perm", wrapper=ROOT_OWNED_OPT_ML),
    "no-python": Case(1, 1, "train", {"PATH": "/nonexistent"}, launcher="bash"),
    # Need a CUDA build of torch and one GPU.
    "gpu-nccl-no-gpu": Case(1, 2, "nccl-train", {"CUDA_VISIBLE_DEVICES": ""}),
    "gpu-cuda-none": Case(1, 1, "cuda-none", {"CUDA_VISIBLE_DEVICES": ""}),
    "gpu-duplicate": Case(1, 2, "nccl-train", {"NCCL_DEBUG": "WARN"}),
    "gpu-ifname": Case(1, 1, "nccl-train", {"NCCL_SOCKET_IFNAME": "ethwe", "NCCL_DEBUG": "WARN"}),
    "gpu-watchdog": Case(1, 1, "nccl-watchdog", timeout_s=60),
    "gpu-oom": Case(1, 1, "cuda-oom"),
}


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pump(stream: Any, path: Path) -> None:
    with path.open("ab", buffering=0) as log:
        for raw in stream:
            log.write(now().encode() + b" " + raw)


def capture(case: str, out: Path) -> Path:
    """Run one case; returns its record directory."""
    spec = CASES[case]
    root = out / case
    shutil.rmtree(root, ignore_errors=True)
    (root / "ranks").mkdir(parents=True)
    code = Path(tempfile.mkdtemp(prefix="capture-")) / "code"
    code.mkdir()
    shutil.copy(HERE / "train.py", code / "train.py")
    port, names = free_port(), [f"algo-{i + 1}" for i in range(spec.hosts)]
    started, procs, pumps = now(), {}, []
    for node, host in enumerate(names):
        env = {
            **os.environ,
            "PYTHONPATH": str(HERE / "capture_tee"),
            "CAPTURE_RANKS_DIR": str(root / "ranks"),
            "SM_CURRENT_HOST": host,
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("TORCH_DISTRIBUTED_DEBUG", None)
        master = spec.env.get("CAPTURE_MASTER_ADDR", "127.0.0.1")
        argv = [
            *spec.wrapper,
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            str(spec.hosts),
            "--nproc_per_node",
            str(spec.nproc),
            "--node_rank",
            str(node),
            "--master_addr",
            master,
            "--master_port",
            str(port),
            "train.py",
            "--mode",
            spec.mode,
        ]
        if spec.launcher == "bash":
            argv = ["/bin/bash", "-c", 'python3 "$@"', "bash", "train.py", "--mode", spec.mode]
        env.update(spec.env)
        (root / "hosts" / host).mkdir(parents=True)
        procs[host] = subprocess.Popen(
            argv, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        pumps.append(threading.Thread(target=_pump, args=(procs[host].stdout, root / "hosts" / host / "log.txt")))
        pumps[-1].start()
    codes, status = {}, "succeeded"
    for host, proc in procs.items():
        try:
            codes[host] = proc.wait(timeout=spec.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            codes[host], status = proc.wait(), "timeout"
    for pump in pumps:
        pump.join()
    if status == "succeeded" and any(codes.values()):
        status = "failed"
    _manifest(root, case, names, spec.nproc, codes, status, started)
    shutil.rmtree(code.parent, ignore_errors=True)
    return root


def _manifest(
    root: Path, case: str, hosts: list[str], nproc: int, codes: dict[str, int], status: str, started: str
) -> None:
    """A format-1 manifest with what the log analysis reads, and where the capture came from."""
    import torch

    ranks = {str(i * nproc + j): {"host": h, "local_rank": j} for i, h in enumerate(hosts) for j in range(nproc)}
    manifest = {
        "format_version": 1,
        "harness_version": "capture",
        "run_id": root.name,
        "rung": "capture",
        "job": {"name": case, "hyperparameters": {}},
        "started_at": started,
        "ended_at": now(),
        "status": status,
        "complete": True,
        "topology": {
            "hosts": hosts,
            "processes_per_host": nproc,
            "world_size": len(ranks),
            "distribution": "torchrun",
            "launcher": "toolkit",
        },
        "hosts": {h: {"exit_code": c} for h, c in codes.items()},
        "ranks": ranks,
        "rung_facts": {},
        "capture": {
            "case": case,
            "mode": CASES[case].mode,
            "env": CASES[case].env,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    target = Path(sys.argv[1])
    for name in sys.argv[2:] or [c for c in CASES if not c.startswith("gpu-")]:
        record = capture(name, target)
        print(name, json.loads((record / "manifest.json").read_text())["status"], flush=True)
