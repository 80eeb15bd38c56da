"""Regression job with wall-clock-based periodic checkpoints (for spot interruptions).

What goes wrong
---------------
Each rank decides on its own clock when the next checkpoint is due
(``time.monotonic() - last_ckpt > interval``), and saving is a collective step
(barrier, rank 0 writes, barrier). The ranks' timers do not start together:
after building the model, rank 0 alone profiles the dataset and only then
starts its timer, while the other ranks start theirs immediately and wait for
rank 0 in the first step's gradient all-reduce. So the other ranks reach the
deadline on an earlier step than rank 0 (and not all on the same one), enter
the checkpoint barrier while their peers are in the next step's gradient
all-reduce, and the collectives no longer pair up: the job stops making
progress inside ``backward()``/``barrier`` until the collective timeout or
max_run kills it. The stacks point at DDP's all-reduce, not at the checkpoint
timer. At one process there is nobody to disagree with and checkpoints are
written normally.

Public sources
--------------
* ComputationalRadiationPhysics/picongpu PR #4042 "allow time dependent
  checkpointing": "the elapsed time per node can differ ... each instance/process
  is within a different time step. This would result in a deadlock."
* ray-project/ray PR #65183 "Make ray.train.get_preemption_info() consistent
  across workers": a rank-local condition guarding report()/barrier deadlocks
  against the DDP all-reduce; fixed by broadcasting rank 0's decision.
* Lightning-AI/pytorch-lightning issue #11267 "DDP training hangs on model
  checkpoint" (ranks stuck in different collectives at checkpoint time).

Fix
---
Make the decision collectively: rank 0 evaluates the timer and broadcasts it
(``flag = torch.tensor([due]); dist.broadcast(flag, 0)``) or all-reduce with MAX,
so every rank enters the checkpoint on the same step (or checkpoint every N steps).
"""

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def make_data(n=16384, d=32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g) / d**0.5
    y = x @ w + 0.3 * torch.sin(3 * x[:, :1]) + 0.05 * torch.randn(n, 1, generator=g)
    return x, y


def profile_dataset(x, y):
    """Log a short data profile (quantiles, correlations, duplicate rows)."""
    q = torch.quantile(x, torch.tensor([0.01, 0.5, 0.99]), dim=0)
    corr = torch.corrcoef(torch.cat([x, y], 1).T)
    dup = len(x) - torch.unique(x.round(decimals=3), dim=0).shape[0]
    for _ in range(20):  # bootstrap the target mean's spread
        idx = torch.randint(len(y), (len(y),))
        _ = y[idx].mean()
    print(
        f"profile: rows={len(x)} p50_range=({q[1].min():.2f},{q[1].max():.2f}) "
        f"max|corr(x,y)|={corr[-1, :-1].abs().max():.2f} duplicates={dup}",
        flush=True,
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--checkpoint-every-s", type=float, default=2.0)
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    ckpt_dir = os.environ.get("CHECKPOINT_DIR", "/tmp/checkpoints")

    x, y = make_data()
    ds = TensorDataset(x, y)
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(ds, batch_size=args.batch_size, sampler=sampler)
    model = DDP(nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 1)))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.MSELoss()
    if rank == 0:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"model parameters: {n_params}", flush=True)
        profile_dataset(x, y)
    last_ckpt = time.monotonic()

    def save_checkpoint(epoch, step):
        dist.barrier()  # everyone has finished the step
        if rank == 0:
            os.makedirs(ckpt_dir, exist_ok=True)
            torch.save(
                {"model": model.module.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step},
                os.path.join(ckpt_dir, "last.pt"),
            )
            print(f"checkpoint epoch={epoch} step={step}", flush=True)
        dist.barrier()  # nobody races ahead of a half-written checkpoint

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        for step, (xb, yb) in enumerate(loader):
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            if rank == 0 and step % 32 == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)
            if time.monotonic() - last_ckpt > args.checkpoint_every_s:
                save_checkpoint(epoch, step)
                last_ckpt = time.monotonic()

    if rank == 0:
        out = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out, exist_ok=True)
        torch.save(model.module.state_dict(), os.path.join(out, "model.pt"))
        print("saved", os.path.join(out, "model.pt"), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
