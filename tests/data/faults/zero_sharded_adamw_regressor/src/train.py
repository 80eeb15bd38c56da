"""Tabular regressor trained with DDP + ZeroRedundancyOptimizer (sharded AdamW).

What goes wrong
---------------
The AdamW parameter groups ("decay" for matrices, "no_decay" for biases and
LayerNorm weights) are built with set arithmetic over Parameter objects and then
turned into lists: ``list(set(model.parameters()) - no_decay)``.  A set of
tensors iterates in an order that depends on the tensors' memory addresses, so
every process gets the parameters of a group in a different order.

A plain optimizer does not care, but ZeroRedundancyOptimizer partitions the
parameters between ranks from that order (sorted by size, ties kept in input
order) and, after each rank has stepped its own partition, broadcasts every
partition parameter-by-parameter.  The ranks disagree about which of the many
equally sized tensors (the 64-element biases / LayerNorm weights, the 64x64
matrices) belong to which rank, so the broadcasts pair *different* tensors of
the same size: a LayerNorm weight on one rank is overwritten with a bias from
another, a hidden matrix with another layer's matrix.  Nothing fails, because
each broadcast has matching sizes; the model is silently scrambled after every
step.  With one process there is a single partition that owns everything and no
broadcast, so the single-process run trains normally.

Public sources
--------------
* pytorch/pytorch PR #46750 "ZeroRedundancyOptimizer: an implementation of a
  standalone sharded optimizer wrapper", review thread on equal-size ordering
  (mrshenli: "if there are equal sizes, is it guaranteed that all ranks will
  still see the same order? ... very likely, it won't crash (as sizes are the
  same), but communication can yield wrong result").
  https://github.com/pytorch/pytorch/pull/46750
* torch.optim documentation: parameters "need to be specified as collections
  that have a deterministic ordering that is consistent between runs ...
  objects that don't satisfy those properties are sets".
  https://pytorch.org/docs/stable/optim.html

Fix
---
Build the groups in the module's own (deterministic) order, e.g.
``decay = [p for n, p in model.named_parameters() if p.ndim >= 2]`` and
``no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]``.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def make_data(n, seed):
    w = torch.randn(32, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 32, generator=g)
    y = torch.tanh(x @ w / 4) * 3 + 0.5 * x[:, 0] * x[:, 1] + 0.1 * torch.randn(n, generator=g)
    return TensorDataset(x, y.unsqueeze(1))


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return x + torch.relu(self.fc(self.norm(x)))


class Regressor(nn.Module):
    def __init__(self, d_in=32, d=64, depth=4):
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.blocks = nn.Sequential(*[Block(d) for _ in range(depth)])
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1))

    def forward(self, x):
        return self.out(self.blocks(self.inp(x)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--global-batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    train_ds, val_ds = make_data(2048, 0), make_data(512, 1)
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(train_ds, batch_size=args.global_batch_size // world, sampler=sampler)

    torch.manual_seed(0)
    model = Regressor()
    ddp = DDP(model)

    # No weight decay on biases and LayerNorm weights.
    no_decay = {p for n, p in model.named_parameters() if p.ndim < 2}
    decay = set(model.parameters()) - no_decay
    param_groups = [
        {"params": list(decay), "weight_decay": args.weight_decay},
        {"params": list(no_decay), "weight_decay": 0.0},
    ]
    # Shard the AdamW state across ranks (ZeRO stage 1) to save memory.
    optimizer = ZeroRedundancyOptimizer(param_groups, optimizer_class=torch.optim.AdamW, lr=args.lr)
    loss_fn = nn.MSELoss()

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        ddp.train()
        for step, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            loss = loss_fn(ddp(x), y)
            loss.backward()
            optimizer.step()
            if rank == 0 and step % 8 == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)
        if rank == 0:
            model.eval()
            with torch.no_grad():
                xv, yv = val_ds.tensors
                val = loss_fn(model(xv), yv).item()
            print(f"epoch={epoch} val_mse={val:.4f}", flush=True)

    if rank == 0:
        out = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(out, "model.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
