"""Processes of its own: a multiprocessing.Process child, then two ranks started by
torch.multiprocessing.spawn (gloo, file rendezvous) that train DDP on a DataLoader with forked
workers and one spawned worker, save from rank 0, run a Python helper with separate stdout and
stderr, fork a child and wait for every child, and take a SIGUSR1 of their own."""

import argparse
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def flag(text: str) -> bool:
    return text.lower() in ("true", "1", "yes")


def prepare(path: str) -> None:
    with open(path, "w") as handle:
        handle.write("prepared\n")
    print("child prepared", os.path.basename(path), flush=True)


def worker(rank: int, args: argparse.Namespace, rendezvous: str) -> None:
    got = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    os.kill(os.getpid(), signal.SIGUSR1)  # the job's own handler still runs
    torch.manual_seed(0)
    data = torch.arange(96, dtype=torch.float32).reshape(48, 2) / 96
    dataset = TensorDataset(data[:, :1], data[:, 1:])
    sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=args.shuffle)
    model = DistributedDataParallel(torch.nn.Linear(1, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    step = 0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for features, target in DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=2):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(features), target)
            loss.backward()
            optimizer.step()
            total = loss.detach().clone()
            dist.all_reduce(total)
            if rank == 0:
                print(f"step={step} loss={total.item() / 2:.6f}", flush=True)
            step += 1
    os.environ["RANK"] = str(rank)  # a spawned worker inherits RANK: it must not become the rank
    spawned = DataLoader(dataset, batch_size=24, num_workers=1, multiprocessing_context="spawn")
    print(f"rank {rank} spawned worker read {sum(len(x) for x, _ in spawned)} rows", flush=True)
    helper = subprocess.run(
        [sys.executable, "-c", "import sys; print('helper out'); print('helper err', file=sys.stderr)"],
        capture_output=True,
        text=True,
        check=True,
    )
    print(f"rank {rank} helper stdout={helper.stdout.strip()!r} stderr={helper.stderr.strip()!r}", flush=True)
    child = os.fork()
    if child == 0:
        os._exit(7)
    reaped = []
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        reaped.append(os.waitstatus_to_exitcode(status))
    print(f"rank {rank} reaped {reaped} handler ran {got == [signal.SIGUSR1]}", flush=True)
    if rank == 0:
        torch.save(model.module.state_dict(), os.path.join(os.environ["SM_MODEL_DIR"], "model.pt"))
    dist.barrier()
    dist.destroy_process_group()
    print(f"rank {rank} done", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(0)  # gloo may abort in interpreter finalisation (see scenarios/self_spawn)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--shuffle", type=flag, default=False)
    args = parser.parse_args()
    child = multiprocessing.Process(
        target=prepare, args=(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "prepared.txt"),)
    )
    child.start()
    child.join()
    print("prepare exited with", child.exitcode, flush=True)
    rendezvous = os.path.join(tempfile.mkdtemp(), "rendezvous")
    mp.spawn(worker, args=(args, rendezvous), nprocs=2, join=True)
    print("all ranks done", flush=True)


if __name__ == "__main__":
    main()
