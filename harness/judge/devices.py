"""How many processes trained, against what the instance type offers.

A job on an instance with several GPUs that names no distribution is started by SageMaker as
one ``python train.py`` per host (aws/sagemaker-python-sdk#5610, huggingface/accelerate#1404):
it succeeds, on one device, and the others idle. The emulated rungs may have no GPU at all, so
what the job is offered is the instance type's (``harness.spec.host_contract.GPUS_PER_INSTANCE``); what
it did is read from the processes that took optimizer steps (the probe's ``optimizer_steps``,
with or without a process group). One process that drives every device (``DataParallel``) is
not this fault.
"""

from __future__ import annotations

from collections import Counter

from harness.judge.findings import Finding
from harness.judge.protocol import CheckContext
from harness.record.run_record import RunRecord
from harness.spec.host_contract import GPUS_PER_INSTANCE


def check_run(record: RunRecord, context: CheckContext) -> list[Finding]:
    job = record.manifest.job
    instance = job.instance_type or ""
    gpus = GPUS_PER_INSTANCE.get(instance, 0)
    if gpus < 2 or job.distribution != "none":
        return []  # a distributed job: the rung chose its processes (single runs one by design)
    processes = record.processes()
    training = [p for p in processes if int(p.get("optimizer_steps") or 0) > 0]
    if not training or any(p.get("data_parallel") for p in processes):
        return []
    per_host = Counter(str(p.get("host")) for p in training)
    if max(per_host.values()) > 1:
        return []
    return [
        Finding(
            kind="ranks",
            severity="divergence",
            title=f"one process trains on each {instance} host, which has {gpus} GPUs",
            evidence=[
                f"{host}: 1 process took optimizer steps (pid {p.get('pid')}: {p.get('optimizer_steps')} steps)"
                for host, p in sorted((str(p.get("host")), p) for p in training)
            ]
            + ["the job names no distribution: SageMaker starts the entry point once per host"],
            hint="set distribution: torchrun (SageMaker starts one process per GPU) or launch the processes from "
            "the script (accelerate launch, torch.multiprocessing.spawn)",
            cause="world-size-one",
            confidence=0.7,
        )
    ]
