"""Shard-per-file regression job trained with DDP + ``model.join()`` for uneven inputs.

What the job is
---------------
A small MLP regressor is trained on a synthetic tabular dataset that (as in the
real pipeline) arrives as a list of "shard files" of different sizes.  Each rank
reads the shards ``shards[rank::world_size]``, so ranks see different numbers of
batches.  To cope with that, the team wrapped the training loop in DDP's
``model.join()`` context manager, exactly as the uneven-inputs tutorial shows.
For the SageMaker metric regex the job also logs a *global* running loss: every
step it packs ``[sum_of_losses, n_samples]`` into a tensor and calls
``dist.all_reduce`` on it so rank 0 can print the cluster-wide average.

What goes wrong and why
-----------------------
``join()`` only knows about the collectives DDP itself issues (the per-iteration
"still active" all_reduce and the gradient-bucket all_reduces of the backward
pass).  A rank that has run out of shards joins early and from then on
*shadows* only those DDP collectives.  The hand-written metric ``all_reduce``
in the training loop is not shadowed, so as soon as the first rank joins, the
remaining ranks' metric all_reduce is paired with the joined rank's shadow
collectives (the join-count all_reduce / gradient buckets).  The collective
sequences drift out of step: tensors of different sizes get matched, the join
bookkeeping receives loss values instead of 0/1 flags, and the job crashes in
gloo or deadlocks.  In one process (world_size 1) there is no unevenness and
nothing to shadow, so the job runs fine.

Public sources
--------------
* PyTorch docs, ``DistributedDataParallel.join`` warning (added in
  pytorch/pytorch PR #42577 and clarified in PR #57448): "If the model or
  training loop this context manager is wrapped around has additional
  distributed collective operations ... this context manager is not aware of
  non-DDP collective communication" -- ``throw_on_early_termination`` must be
  used or the collectives must be made Joinable.
* PyTorch tutorial "Distributed Training with Uneven Inputs Using the Join
  Context Manager" (pytorch/tutorials PR #1610,
  https://pytorch.org/tutorials/advanced/generic_join.html): only Joinables
  (DDP, ZeroRedundancyOptimizer) have their collectives shadowed.
* RFC pytorch/pytorch issue #38174 (Join-based API for uneven inputs).

Fix
---
Do not issue user collectives inside the ``join()`` block: accumulate the loss
sum / sample count locally and ``all_reduce`` them once after the ``with
model.join():`` block has exited (or shard the data evenly with a
``DistributedSampler`` and drop ``join()``, or use
``throw_on_early_termination=True`` and handle the exception).
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import ConcatDataset, DataLoader, TensorDataset

SHARD_SIZES = [40, 56, 48, 64, 40, 72, 32, 48]
BATCH = 8
N_FEAT = 12


def make_shards():
    g = torch.Generator().manual_seed(1234)
    w_true = torch.randn(N_FEAT, 1, generator=g)
    shards = []
    for n in SHARD_SIZES:
        x = torch.randn(n, N_FEAT, generator=g)
        y = torch.tanh(x @ w_true) + 0.05 * torch.randn(n, 1, generator=g)
        shards.append(TensorDataset(x, y))
    return shards


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.05)
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    world = dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    print(
        f"rank={rank} local_rank={local_rank} world={world} local_world={os.environ.get('LOCAL_WORLD_SIZE')}",
        flush=True,
    )

    shards = make_shards()
    my_shards = shards[rank::world]  # each rank reads its own shard files
    ds = ConcatDataset(my_shards)
    g = torch.Generator().manual_seed(100 + rank)
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, generator=g)
    print(f"rank={rank} samples={len(ds)} batches={len(loader)}", flush=True)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(N_FEAT, 32), nn.ReLU(), nn.Linear(32, 1))
    model = DDP(net)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    crit = nn.MSELoss()

    step = 0
    for epoch in range(args.epochs):
        model.train()
        with model.join():  # uneven inputs handled by DDP ... or so we think
            for x, y in loader:
                opt.zero_grad()
                loss = crit(model(x), y)
                loss.backward()
                opt.step()
                # cluster-wide running loss for the metrics regex
                stats = torch.tensor([loss.item() * x.size(0), float(x.size(0))])
                dist.all_reduce(stats)  # BUG: not shadowed by join()
                if rank == 0:
                    print(f"epoch={epoch} step={step} loss={stats[0] / stats[1]:.4f}", flush=True)
                step += 1
        dist.barrier()

    with torch.no_grad():
        csum = sum(p.double().sum().item() for p in net.parameters())
    if rank == 0:
        print(f"final weight_checksum={csum:.6f}", flush=True)
        out = os.environ.get("SM_MODEL_DIR", "/tmp/model_out")
        os.makedirs(out, exist_ok=True)
        torch.save(net.state_dict(), os.path.join(out, "model.pt"))
        print(f"saved model to {out}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
