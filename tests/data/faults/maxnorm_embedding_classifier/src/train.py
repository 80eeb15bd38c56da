"""Bag-of-embeddings sequence classifier whose token embedding uses max_norm.

What goes wrong
---------------
``nn.Embedding(..., max_norm=1.0)`` enforces the norm constraint inside the
forward pass: before the lookup it renormalises, *in place* and outside autograd,
the rows of ``weight`` that the current batch looks up.  Under
DistributedDataParallel every rank looks up different tokens (its own shard of
the global batch), so every rank rescales a different set of rows of its own
replica.  DDP only averages gradients; it broadcasts the parameters once, at
construction, and never compares them again.  From the first step on the
replicas differ (a row looked up by rank 1 is shrunk on rank 1 only), the
identical averaged gradient is then applied to different weights, and the drift
accumulates for the whole run.  Rank 0 finally saves its own replica, which is
neither what the other ranks trained nor what one process would have trained.
No error or warning is raised.  With one process every looked-up row is
renormalised in the only replica, so the single-process run is self-consistent.

Public sources
--------------
* torch.nn.Embedding documentation, note added by pytorch/pytorch PR #45595
  ("Add note about in-place weight modification for nn.Embedding"): "When
  max_norm is not None, Embedding's forward method will modify the weight tensor
  in-place." https://github.com/pytorch/pytorch/pull/45595
* pytorch/pytorch issue #37246 "`max_norm` parameter on nn.Embedding will fail
  inside nn.DataParallel" (the in-place renorm breaks replicated training; under
  DDP it does not fail, it silently desynchronises).
  https://github.com/pytorch/pytorch/issues/37246
* pytorch/pytorch issue #26596 "nn.Embedding with max_norm shows unstable
  behavior" (the in-place modification during forward).

Fix
---
Do not constrain the norm inside forward.  Drop ``max_norm`` and apply the
constraint as a deterministic projection after ``optimizer.step()`` on every
rank, e.g. ``with torch.no_grad(): emb.weight.renorm_(2, 0, 1.0)`` (all rows,
the same on all replicas), or gather the global batch's token ids and renorm
those rows on every rank.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

VOCAB, SEQ = 3000, 16


def make_data(n, seed):
    # Token sentiment is fixed; a sequence is positive when its tokens' sentiment sums above 0.
    sentiment = torch.randn(VOCAB, generator=torch.Generator().manual_seed(99))
    g = torch.Generator().manual_seed(seed)
    # Zipf-like token frequencies: a few common tokens, a long tail.
    probs = 1.0 / torch.arange(1, VOCAB + 1, dtype=torch.float) ** 0.8
    tokens = torch.multinomial(probs.expand(n, VOCAB), SEQ, replacement=True, generator=g)
    labels = (sentiment[tokens].sum(1) > 0).long()
    return TensorDataset(tokens, labels)


class BagClassifier(nn.Module):
    def __init__(self, dim=32):
        super().__init__()
        # Keep every token vector inside the unit ball (regularises the rare-token tail).
        self.embed = nn.Embedding(VOCAB, dim, max_norm=1.0)
        self.head = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, 2))

    def forward(self, tokens):
        return self.head(self.embed(tokens).mean(1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--global-batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-2)
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    train_ds, val_ds = make_data(4096, 0), make_data(1024, 1)
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(train_ds, batch_size=args.global_batch_size // world, sampler=sampler)

    torch.manual_seed(0)
    model = BagClassifier()
    ddp = DDP(model)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        ddp.train()
        for step, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            loss = loss_fn(ddp(x), y)
            loss.backward()
            optimizer.step()
            if rank == 0 and step % 16 == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)
        if rank == 0:
            model.eval()
            with torch.no_grad():
                xv, yv = val_ds.tensors
                logits = model(xv)
            print(
                f"epoch={epoch} val_loss={loss_fn(logits, yv).item():.4f} "
                f"val_acc={(logits.argmax(1) == yv).float().mean().item():.4f}",
                flush=True,
            )

    if rank == 0:
        out = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(out, "model.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
