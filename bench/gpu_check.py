"""The GPU checks, in one go, on a machine with CUDA devices: one table, in minutes.

    python bench/gpu_check.py [--records DIR] [--budget SECONDS]

Each row is one check, run for real, with its outcome, its time and what it showed:

* ``local-gpu``: the reference job on one GPU per process (NCCL), against ``local`` on the CPU,
  judged with the GPU tolerance the docs give (weights within 1e-4);
* ``nccl facts``: what NCCL said it chose on that run (network, transports, version:
  :mod:`harness.judge.nccl`), with ``NCCL_DEBUG=INFO`` set in the job's environment;
* ``docker nccl``: the reference job in one container per host, NCCL across containers (the GPUs
  split between the hosts), against ``local-gpu``;
* ``toolkit``: the same under the real ``sagemaker-training`` toolkit image;
* ``tensor diff``: two checkpoints written on the GPU, compared as the diff compares them;
* ``planted nccl fault``: NCCL pointed at an interface no host has (``NCCL_SOCKET_IFNAME``): the
  verdict must name ``network-interface`` first.

A check that cannot run here (no Docker engine, no image) says why and the rest go on; without a
CUDA device nothing runs and the script says so (exit 0: there is nothing to check). Checks stop
being started once ``--budget`` seconds have gone (default 420: the table within 8 minutes).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from harness.backends import get_backend
from harness.backends.local import cuda_device_count
from harness.errors import HarnessError
from harness.judge import nccl, tensors
from harness.judge.protocol import Tolerance
from harness.judge.verdict import judge
from harness.record.run_record import RunRecord
from harness.spec.job import JobSpec, load_job

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "scenarios" / "ddp_csv" / "job.yaml"
GPU_TOLERANCE = Tolerance(tensor_rtol=1e-4, tensor_atol=1e-5, metric_rtol=1e-3, metric_atol=1e-5)

Row = tuple[str, str, float, str]


def _job(gpus: int, **environment: str) -> JobSpec:
    """The reference job on one host with a process per GPU (NCCL needs a device per rank)."""
    job = load_job(REFERENCE)
    return job.model_copy(
        update={"instance_count": 1, "processes_per_host": gpus, "environment": {**job.environment, **environment}}
    )


def _verdict(records: list[RunRecord]) -> str:
    verdict = judge(records, tolerance=GPU_TOLERANCE)
    causes = ", ".join(f.cause or f.title for f in verdict.findings[:2])
    return f"{verdict.outcome}" + (f" ({causes})" if causes else "")


class Checks:
    def __init__(self, records: Path, budget_s: float) -> None:
        self.records, self.deadline = records, time.monotonic() + budget_s
        self.rows: list[Row] = []
        self.gpus = cuda_device_count()
        self.local_gpu: RunRecord | None = None
        self.device = "cuda"

    def run(self, name: str, check: Callable[[], str]) -> None:
        if time.monotonic() > self.deadline:
            self.rows.append((name, "not run", 0.0, "the budget was spent"))
            return
        start = time.monotonic()
        try:
            outcome, detail = "ok", check()
        except HarnessError as exc:
            outcome, detail = "unavailable", f"{exc} ({exc.hint})" if exc.hint else str(exc)
        except AssertionError as exc:
            outcome, detail = "FAILED", str(exc)
        self.rows.append((name, outcome, time.monotonic() - start, detail))

    def local_gpu_against_local(self) -> str:
        job = _job(self.gpus, NCCL_DEBUG="INFO")
        cpu = get_backend("local").run(job, self.records)
        self.local_gpu = gpu = get_backend("local-gpu").run(job, self.records)
        assert gpu.status == "succeeded", f"local-gpu {gpu.status}: {gpu.root}"
        said = _verdict([cpu, gpu])
        assert said.startswith("parity"), said
        return f"{self.gpus} GPUs: {said}"

    def nccl_facts(self) -> str:
        assert self.local_gpu is not None, "local-gpu did not run"
        facts = nccl.facts(self.local_gpu)
        assert facts, "no NCCL INFO line in the local-gpu record"
        return (
            f"version {', '.join(sorted(facts.versions))}; network {', '.join(sorted(facts.networks))}; "
            f"transports {', '.join(sorted(facts.transports))}"
        )

    def docker_nccl(self, image: str | None = None) -> str:
        assert self.local_gpu is not None, "local-gpu did not run"
        hosts = 2 if self.gpus >= 2 else 1
        job = _job(max(1, self.gpus // hosts)).model_copy(update={"instance_count": hosts})
        options = {"gpus": True, **({"image": image} if image else {})}
        backend = get_backend("docker", **options)
        backend.check(job)
        record = backend.run(job, self.records)
        assert record.status == "succeeded", f"docker {record.status}: {record.root}"
        facts = nccl.facts(record)
        return f"{hosts} containers; NCCL network {', '.join(sorted(facts.networks)) or '?'}; " + _verdict(
            [self.local_gpu, record]
        )

    def toolkit(self) -> str:
        return self.docker_nccl(image="harness/toolkit")

    def tensor_diff(self) -> str:
        script = (
            "import sys, torch; torch.manual_seed(0); m = torch.nn.Linear(64, 64).to(DEVICE);"
            "torch.save(m.state_dict(), sys.argv[1]); m.weight.data[0, 0] += 1e-2;"
            "torch.save(m.state_dict(), sys.argv[2])"
        ).replace("DEVICE", repr(self.device))
        a, b = self.records / "a.pt", self.records / "b.pt"
        subprocess.run([sys.executable, "-c", script, str(a), str(b)], check=True, timeout=120)
        diff = tensors.compare(a, b, rtol=GPU_TOLERANCE.tensor_rtol, atol=GPU_TOLERANCE.tensor_atol)
        moved = [t for t in diff.tensors if t.beyond]
        assert [t.name for t in moved] == ["weight"], f"a weight moved by 1e-2 was not found alone: {moved}"
        return f"weight: {moved[0].beyond} element beyond tolerance, max |a-b| {moved[0].max_abs:.3g}"

    def planted_nccl_fault(self) -> str:
        job = _job(min(self.gpus, 2), NCCL_SOCKET_IFNAME="harness-no-such-interface")
        record = get_backend("local-gpu").run(job, self.records)
        said = _verdict([record])
        assert "network-interface" in said, said
        return said


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=Path)
    parser.add_argument("--budget", type=float, default=420.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="harness-gpu-check-") as scratch:
        checks = Checks(args.records or Path(scratch), args.budget)
        if checks.gpus == 0:
            print("no CUDA device visible to torch on this machine: no GPU check ran")
            return 0
        for name, check in (
            ("local-gpu against local", checks.local_gpu_against_local),
            ("nccl facts", checks.nccl_facts),
            ("docker, NCCL across containers", checks.docker_nccl),
            ("toolkit image on GPUs", checks.toolkit),
            ("tensor diff of GPU checkpoints", checks.tensor_diff),
            ("planted NCCL fault", checks.planted_nccl_fault),
        ):
            checks.run(name, check)
        print("| check | outcome | seconds | what it showed |\n|---|---|---|---|")
        for name, outcome, seconds, detail in checks.rows:
            print(f"| {name} | {outcome} | {seconds:.1f} | {detail} |")
        return 1 if any(outcome == "FAILED" for _, outcome, _, _ in checks.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
