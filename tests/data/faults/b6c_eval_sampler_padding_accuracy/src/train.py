"""Tabular 3-class classifier with a distributed validation pass after every epoch.

What the job is
---------------
A small MLP is trained with DDP on a synthetic 3-class dataset (256 training
rows, 90 validation rows, some label noise).  The global batch size is fixed at
32 and split evenly across ranks, so the training trajectory is the same for 1
or N processes.  After each epoch the job evaluates the validation set *in
parallel*: the validation rows are split across ranks with
``DistributedSampler(val_set, shuffle=False)`` (the pattern used by the
torchvision classification reference scripts), every rank counts its correct
predictions and summed loss, the counts are ``all_reduce``d and rank 0 reports
``val_loss`` / ``val_acc`` (the numbers the SageMaker metric regex scrapes and
that are written to ``metrics.json`` next to the model).

What goes wrong and why
-----------------------
``DistributedSampler`` makes every rank see the same number of samples: when
``len(dataset)`` is not divisible by ``num_replicas`` it *pads* the index list
by repeating the first indices (``indices += indices[:padding]``).  With 90
validation rows and 4 ranks the sampler hands out 92 rows: two validation rows
are evaluated twice and counted twice in ``correct`` and in the denominator.
The reported validation accuracy and loss therefore depend on the world size
and differ from the single-process run (which evaluates each of the 90 rows
exactly once), even though the trained weights are identical.  Nothing crashes;
the metric is silently wrong.

Public sources
--------------
* pytorch/pytorch issue #25162 "Incorrect Validation Accuracy Due to
  Distributed Sampler".
* pytorch/pytorch issue #22584 "Drop 'add extra samples to make it evenly
  divisible' constraint in DistributedSampler" (validation results change with
  the number of processes).
* pytorch/vision issue #4559 "Evaluation code of references is slightly off"
  (images counted more than once in distributed evaluation).
* facebookresearch/deit PR #24 review and mosaicml/composer PR #2218 "Exact
  Eval" (slice off the sampler's duplicate samples).

Fix
---
Do not count the padded duplicates: evaluate with an un-padded sampler
(``indices[rank::world]`` without padding, one extra/short batch is fine
because evaluation has no DDP collectives in forward), or keep the padded
sampler but drop predictions whose global index is >= ``len(val_set)`` before
counting (e.g. gather ``(index, correct)`` pairs and de-duplicate), or evaluate
the full validation set on rank 0 only.
"""

import argparse
import json
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

N_TRAIN, N_VAL, N_FEAT, N_CLASS = 256, 90, 10, 3
GLOBAL_BATCH = 32


def make_data():
    g = torch.Generator().manual_seed(7)
    centers = 1.2 * torch.randn(N_CLASS, N_FEAT, generator=g)

    def draw(n):
        y = torch.randint(0, N_CLASS, (n,), generator=g)
        x = centers[y] + torch.randn(n, N_FEAT, generator=g)
        flip = torch.rand(n, generator=g) < 0.15  # label noise
        y = torch.where(flip, torch.randint(0, N_CLASS, (n,), generator=g), y)
        return TensorDataset(x, y)

    return draw(N_TRAIN), draw(N_VAL)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.1)
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    print(
        f"rank={rank} local_rank={local_rank} world={world} local_world={os.environ.get('LOCAL_WORLD_SIZE')}",
        flush=True,
    )

    train_set, val_set = make_data()
    per_rank_batch = GLOBAL_BATCH // world
    train_sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=0)
    train_loader = DataLoader(train_set, batch_size=per_rank_batch, sampler=train_sampler)
    val_sampler = DistributedSampler(val_set, num_replicas=world, rank=rank, shuffle=False)
    val_loader = DataLoader(val_set, batch_size=16, sampler=val_sampler)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(N_FEAT, 32), nn.ReLU(), nn.Linear(32, N_CLASS))
    model = DDP(net)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    metrics = []
    step = 0
    for epoch in range(args.epochs):
        model.train()
        train_sampler.set_epoch(epoch)
        for x, y in train_loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            logged = loss.detach().clone()
            dist.all_reduce(logged)
            if rank == 0:
                print(f"epoch={epoch} step={step} loss={logged.item() / world:.4f}", flush=True)
            step += 1

        # ---- distributed validation ----
        model.eval()
        stats = torch.zeros(3, dtype=torch.float64)  # loss_sum, correct, count
        with torch.no_grad():
            for x, y in val_loader:
                logits = net(x)
                stats[0] += F.cross_entropy(logits, y, reduction="sum").item()
                stats[1] += (logits.argmax(1) == y).sum().item()
                stats[2] += y.numel()
        dist.all_reduce(stats)
        val_loss = (stats[0] / stats[2]).item()
        val_acc = (stats[1] / stats[2]).item()
        metrics.append({"epoch": epoch, "val_loss": val_loss, "val_acc": val_acc})
        if rank == 0:
            print(f"epoch={epoch} val_loss={val_loss:.4f} val_acc={val_acc:.4f}", flush=True)

    with torch.no_grad():
        csum = sum(p.double().sum().item() for p in net.parameters())
    if rank == 0:
        print(f"final weight_checksum={csum:.6f} val_acc={metrics[-1]['val_acc']:.4f}", flush=True)
        out = os.environ.get("SM_MODEL_DIR", "/tmp/model_out")
        os.makedirs(out, exist_ok=True)
        torch.save(net.state_dict(), os.path.join(out, "model.pt"))
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(metrics, f)
        print(f"saved model to {out}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
