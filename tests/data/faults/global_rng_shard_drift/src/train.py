"""Text-length classifier with a hand-written, length-bucketed distributed sampler.

What goes wrong
---------------
Every rank seeds the global torch RNG with the same seed, and the sampler draws
each epoch's permutation from that *global* RNG (``torch.randperm``), relying on
all ranks drawing the identical permutation and then taking ``perm[rank::world]``.
That holds only while every rank makes exactly the same sequence of calls into
the global RNG. Rank 0 alone draws a few random examples to preview before
training and again to log predictions at the end of each epoch, so its RNG
stream runs ahead of the others: from the first epoch on, rank 0's permutation
differs from ranks 1-3, its shard overlaps theirs, and part of the dataset is
never visited in an epoch while other samples are used twice. At one process
the sharding is trivially complete and nothing is wrong; at 2x2 the run finishes
with plausible losses but trains on roughly three quarters of the distinct data
each epoch. No error, no warning.

Public sources
--------------
* discuss.pytorch.org "Model and optimizer parameters synchronization at start":
  relying on identical seeds requires "exactly the same order of calls into the
  pseudorandom number generator", which conditional user code easily breaks.
* torch.utils.data.DistributedSampler source/docs: it shuffles with its own
  ``torch.Generator`` seeded with ``seed + epoch`` precisely so that ranks agree
  regardless of other RNG use.
* mmengine docs "mmengine.dist.sync_random_seed": ranks must shuffle indices in
  the same order to select non-overlapping data; Megatron-DeepSpeed commit
  "Make dataloader use another random generator (#276)".

Fix
---
Draw the permutation from a dedicated generator,
``torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))``
(or use DistributedSampler), and keep rank-0-only sampling off the shared RNG.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP


def make_data(n=1536, seq=12, vocab=50):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, seq + 1, (n,), generator=g)
    tokens = torch.randint(1, vocab, (n, seq), generator=g)
    mask = torch.arange(seq)[None, :] < lengths[:, None]
    tokens = tokens * mask
    label = ((tokens % 7 == 0).sum(1) >= 2).long()
    return tokens, label


class BucketShardSampler:
    """Shuffle, split across ranks, then group similar lengths into batches."""

    def __init__(self, lengths, batch_size, rank, world):
        self.lengths, self.bs, self.rank, self.world = lengths, batch_size, rank, world

    def epoch_batches(self):
        perm = torch.randperm(len(self.lengths))  # same seed on every rank -> same perm
        mine = perm[self.rank :: self.world]
        mine = mine[torch.argsort(self.lengths[mine], stable=True)]
        batches = [mine[i : i + self.bs] for i in range(0, len(mine), self.bs)]
        order = torch.randperm(len(batches))
        return [batches[i] for i in order]


class Classifier(nn.Module):
    def __init__(self, vocab=50, dim=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 2))

    def forward(self, tokens):
        m = (tokens != 0).float().unsqueeze(-1)
        h = (self.emb(tokens) * m).sum(1) / m.sum(1).clamp(min=1)
        return self.mlp(h)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(args.seed)

    tokens, labels = make_data()
    lengths = (tokens != 0).sum(1)
    sampler = BucketShardSampler(lengths, args.batch_size, rank, world)

    if rank == 0:
        for i in torch.randint(len(tokens), (3,)).tolist():
            print(f"example {i}: len={lengths[i].item()} label={labels[i].item()}", flush=True)

    model = DDP(Classifier())
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        model.train()
        batches = sampler.epoch_batches()
        for step, idx in enumerate(batches):
            optimizer.zero_grad()
            loss = loss_fn(model(tokens[idx]), labels[idx])
            loss.backward()
            optimizer.step()
            if rank == 0 and step % 8 == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)
        if rank == 0:
            model.eval()
            with torch.no_grad():
                probe = torch.randint(len(tokens), (8,))
                acc = (model.module(tokens[probe]).argmax(1) == labels[probe]).float().mean()
            print(f"epoch={epoch} spot-check acc={acc.item():.2f}", flush=True)

    if rank == 0:
        out = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out, exist_ok=True)
        torch.save(model.module.state_dict(), os.path.join(out, "model.pt"))
        print("saved", os.path.join(out, "model.pt"), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
