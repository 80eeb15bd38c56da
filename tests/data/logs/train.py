"""The job the log capture runs (see capture.py): a tiny DDP-style loop over all_reduce that
misbehaves on one rank in the way ``--mode`` names. Each failure is a real torch failure, so
the captured text is what torch really prints, not what we think it prints."""

import argparse
import datetime
import mmap
import os
import signal
import time

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

FAULTY = int(os.environ.get("FAULTY_RANK", "-1"))  # -1: the last rank
FAULT_STEP = int(os.environ.get("FAULT_STEP", "3"))
TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("PG_TIMEOUT_S", "4")))


class Killer(Dataset):
    """Item 5 kills its DataLoader worker the way the kernel's OOM killer would."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == 5:
            time.sleep(1)  # let the trainer take the batches already sent
            os.kill(os.getpid(), signal.SIGKILL)
        return torch.zeros(2)


class Images(Dataset):
    """24 MiB samples: a batch of 4 does not fit a 64 MB /dev/shm."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(3, 1024, 2048)


class SparseShm(Dataset):
    """Writes through a sparse /dev/shm file larger than the tmpfs: SIGBUS, as NCCL or a
    memory-mapped dataset meets it."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        fd = os.open(f"/dev/shm/capture-{os.getpid()}", os.O_RDWR | os.O_CREAT)
        os.ftruncate(fd, 256 << 20)
        view = mmap.mmap(fd, 256 << 20)
        view[:] = b"\1" * (256 << 20)
        return torch.zeros(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="train")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    mode = args.mode
    if mode == "dl-killed":
        for batch in DataLoader(Killer(), num_workers=2):
            print("batch", batch.shape, flush=True)
    if mode in ("shm", "shm-bus"):
        dataset = Images() if mode == "shm" else SparseShm()
        for step, batch in enumerate(DataLoader(dataset, batch_size=4, num_workers=2)):
            print(f"step={step} batch_mib={batch.nelement() * 4 >> 20}", flush=True)
    if mode == "perm":  # /opt/ml/model belongs to root; the job runs as an unprivileged user
        os.setgid(65534)
        os.setuid(65534)
        torch.save({}, "/opt/ml/model/model.pt")
    if mode == "cuda-none":
        torch.zeros(1).cuda()
    if mode == "cuda-oom":
        torch.empty(1 << 40, dtype=torch.uint8, device="cuda")
    backend = "nccl" if mode.startswith(("nccl", "cuda")) else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    rank, world = dist.get_rank(), dist.get_world_size()
    faulty = FAULTY if FAULTY >= 0 else world - 1
    print(
        f"rank {rank}/{world} pid {os.getpid()} on {os.environ.get('SM_CURRENT_HOST')} "
        f"master {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
        flush=True,
    )
    device = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")
    grad = torch.ones(4, device=device)
    for step in range(args.steps):
        if step == FAULT_STEP and rank == faulty:
            fault(mode, grad)
        dist.all_reduce(grad)
        grad.fill_(1.0)
        print(f"step={step} loss={1.0 / (step + 1):.6f}", flush=True)
    dist.barrier()
    print("done", flush=True)
    dist.destroy_process_group()


def fault(mode: str, grad: torch.Tensor) -> None:
    """What the faulty rank does at its step, before that step's all_reduce."""
    if mode == "crash":
        raise ValueError("batch 3 has 17 columns, expected 16")
    if mode == "mismatch-op":
        dist.broadcast(grad, 0)
    if mode == "mismatch-size":
        dist.all_reduce(torch.ones(64, device=grad.device))
    if mode == "straggle":  # evaluates alone while the others wait in all_reduce
        time.sleep(TIMEOUT.total_seconds() + 3)
    if mode == "oom-cpu":
        torch.empty(1 << 50, dtype=torch.uint8)
    if mode == "nccl-watchdog":  # the GPU stays busy for a minute: the collective cannot finish in time
        torch.cuda._sleep(60 * 2_000_000_000)
    if mode == "exit-early":
        print("rank finished early", flush=True)
        os._exit(0)


if __name__ == "__main__":
    main()
