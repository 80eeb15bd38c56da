"""Regression job with gradient accumulation and DDP ``no_sync()``.

What the job is
---------------
A small MLP regressor is trained with DDP and gradient accumulation: the global
micro-batch is 16 rows (split evenly across ranks by a ``DistributedSampler``)
and 4 micro-batches are accumulated per optimizer step.  To avoid an all-reduce
on every micro-batch, the backward passes that are not the last one of an
accumulation window run inside ``model.no_sync()`` (the optimisation added to
HF transformers in PR #7742 and to many trainers).  Each epoch has 18
micro-batches, i.e. four full windows plus a short tail window of 2.  So that
the tail rows are not wasted, the loss of each micro-batch is divided by the
real length of its window and the loop "flushes" the tail with one more
``optimizer.step()`` after the data loader is exhausted.

What goes wrong and why
-----------------------
The sync decision is ``(i + 1) % accum == 0`` only.  The tail window never
reaches a multiple of ``accum``, so *all* of its micro-batches run under
``no_sync()`` and DDP never all-reduces their gradients.  The end-of-epoch
flush then calls ``optimizer.step()`` on purely rank-local gradients: every
rank applies a different update, the replicas silently drift apart (DDP only
broadcasts parameters once, at construction), and from then on each rank
trains a different model.  Rank 0 saves its own copy.  In one process
``no_sync`` is irrelevant and the flush step is correct, so the 2x2 run ends
with different weights / loss curve than the single-process run; nothing
crashes.

Public sources
--------------
* huggingface/accelerate issue #1847 and PR #2134 (the gradient state is
  synced at the end of the dataloader, so the last short accumulation window
  is all-reduced before the step) and PR #1624 / huggingface/transformers
  issue #23935 (the "last step in epoch" sync condition for gradient
  accumulation).
* huggingface/accelerate issue #2831 "GradientState _add_dataloader never
  called" -- "the gradient doesn't get synced at the end of the dataloader".
* PyTorch docs for ``DistributedDataParallel.no_sync``: gradients are only
  accumulated locally inside the context and are synchronized in the first
  forward-backward pass exiting it.

Fix
---
Make the last micro-batch of the epoch a sync point as well:
``sync = (i + 1) % accum == 0 or (i + 1) == len(loader)`` and step the
optimizer there (or, equivalently, run the flush window's final backward
outside ``no_sync()``; or all-reduce the gradients manually before the flush
step).
"""

import argparse
import contextlib
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

N_TRAIN, N_FEAT = 288, 8
GLOBAL_MICRO_BATCH = 16
ACCUM = 4


def make_data():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(N_TRAIN, N_FEAT, generator=g)
    w = torch.randn(N_FEAT, 1, generator=g)
    y = torch.sin(x @ w) + 0.3 * x[:, :1] ** 2 + 0.05 * torch.randn(N_TRAIN, 1, generator=g)
    return TensorDataset(x, y)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.05)
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    print(
        f"rank={rank} local_rank={local_rank} world={world} local_world={os.environ.get('LOCAL_WORLD_SIZE')}",
        flush=True,
    )

    ds = make_data()
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(ds, batch_size=GLOBAL_MICRO_BATCH // world, sampler=sampler)
    n_micro = len(loader)
    n_full = n_micro // ACCUM
    tail = n_micro % ACCUM

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(N_FEAT, 32), nn.Tanh(), nn.Linear(32, 1))
    model = DDP(net)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    crit = nn.MSELoss()

    step = 0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        opt.zero_grad()
        window_loss = torch.zeros(1)
        for i, (x, y) in enumerate(loader):
            # micro-batches in the short tail window are averaged over the tail length
            window_len = ACCUM if i < n_full * ACCUM else tail
            sync = (i + 1) % ACCUM == 0  # BUG: tail window never syncs
            ctx = contextlib.nullcontext() if sync else model.no_sync()
            with ctx:
                loss = crit(model(x), y) / window_len
                loss.backward()
            window_loss += loss.detach()
            if sync:
                opt.step()
                opt.zero_grad()
                dist.all_reduce(window_loss)
                if rank == 0:
                    print(f"epoch={epoch} step={step} loss={window_loss.item() / world:.6f}", flush=True)
                window_loss.zero_()
                step += 1
        if tail:
            # flush the leftover micro-batches so no data is wasted
            opt.step()
            opt.zero_grad()
            dist.all_reduce(window_loss)
            if rank == 0:
                print(f"epoch={epoch} step={step} loss={window_loss.item() / world:.6f}", flush=True)
            step += 1

    # evaluate the saved (rank 0) model on the full training set
    with torch.no_grad():
        x_all, y_all = ds.tensors
        full_loss = crit(net(x_all), y_all).item()
        csum = sum(p.double().sum().item() for p in net.parameters())
    print(f"rank={rank} final weight_checksum={csum:.6f} full_data_loss={full_loss:.6f}", flush=True)
    if rank == 0:
        out = os.environ.get("SM_MODEL_DIR", "/tmp/model_out")
        os.makedirs(out, exist_ok=True)
        torch.save(net.state_dict(), os.path.join(out, "model.pt"))
        print(f"saved model to {out}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
