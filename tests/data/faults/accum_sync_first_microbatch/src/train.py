"""Gradient-accumulation regressor under DDP with no_sync() on the wrong micro-batch.

The job accumulates gradients over --accum-steps micro-batches per optimizer step
and, to save bandwidth, lets DDP all-reduce only once per window by running the
other micro-batches inside DistributedDataParallel.no_sync().  The sync decision
uses `i % accum == 0` while the optimizer step uses `(i + 1) % accum == 0`, so the
all-reduce happens on the FIRST micro-batch of each window (when the gradient
buffers hold only that micro-batch) and the remaining accum-1 micro-batches are
accumulated locally and never averaged across ranks before optimizer.step().

With one process no_sync() has nothing to skip: the window still sums the same
micro-batches and training is correct.  With 2 hosts x 2 processes every optimizer
step applies a gradient that is 1/accum synchronised and (accum-1)/accum rank-local,
so the four replicas take different steps and drift apart from the first update;
rank 0 saves its own replica.  No error, no hang: loss curves look normal.

Public sources:
- modelscope/FunASR PR #3472 "fix(train): align DDP no_sync with gradient
  accumulation": the old `batch_idx % accum_grad` condition synchronised the first
  micro-batch and left rank-local accumulated gradients (4.0 vs 7.0 on two ranks).
- DistributedDataParallel.no_sync docs: gradients are accumulated locally inside
  the context and synchronised in the first forward-backward pass outside it.
- karpathy/nanochat PR #33, Lightning-AI/pytorch-lightning#4092 (no_sync for all
  but the last accumulation step).

Fix: sync on the micro-batch that completes the window, i.e. use the same
condition as the optimizer step: `sync = (i + 1) % accum == 0`.
"""

import argparse
import contextlib
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

DIM = 8


def make_data(seed, n):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g)
    w = torch.linspace(-1.0, 1.0, DIM)
    y = torch.sin(x @ w) + 0.5 * x[:, 0] * x[:, 1] + 0.05 * torch.randn(n, generator=g)
    return x, y.unsqueeze(1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128, help="global batch per optimizer step")
    p.add_argument("--accum-steps", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(args.seed)

    x, y = make_data(1, 4096)
    ds = TensorDataset(x, y)
    sampler = DistributedSampler(ds, shuffle=True, seed=args.seed)
    micro = args.batch_size // (world * args.accum_steps)
    loader = DataLoader(ds, batch_size=micro, sampler=sampler, drop_last=True)

    model = nn.Sequential(nn.Linear(DIM, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)
    accum = args.accum_steps

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        ddp.train()
        opt.zero_grad()
        window_loss = 0.0
        for i, (xb, yb) in enumerate(loader):
            # all-reduce once per accumulation window; the other micro-batches
            # only accumulate locally
            sync = i % accum == 0
            ctx = contextlib.nullcontext() if sync else ddp.no_sync()
            with ctx:
                loss = F.mse_loss(ddp(xb), yb) / accum
                loss.backward()
            window_loss += loss.item()
            if (i + 1) % accum == 0:
                opt.step()
                opt.zero_grad()
                step = (i + 1) // accum
                if rank == 0 and step % 8 == 0:
                    print(f"epoch={epoch} step={step} loss={window_loss:.4f}", flush=True)
                window_loss = 0.0

    xt, yt = make_data(2, 1024)
    model.eval()
    with torch.no_grad():
        test_mse = F.mse_loss(model(xt), yt).item()
    if rank == 0:
        print(f"eval test_mse={test_mse:.4f}", flush=True)
        out = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(out, "model.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
