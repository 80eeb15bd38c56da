"""Imbalanced incident classifier with per-rank class-balanced sampling.

The training set holds routine records followed by the rare incident records
(about 10 %), which were exported separately and appended at the end.  To stop
the model from ignoring the rare class, the loader draws batches with
torch.utils.data.WeightedRandomSampler, weights 1 / class count.

Under torchrun the script first takes the rank's share of the data with
DistributedSampler(shuffle=False) and builds the WeightedRandomSampler from the
labels of that share.  But WeightedRandomSampler yields *positions* into its
weights vector (0 .. len(weights)-1), not dataset indices, and the DataLoader is
given the full dataset, so those positions are used directly as dataset indices.
With one process the share is range(len(dataset)), position == index, and the
sampler balances the classes as intended.  With 2 hosts x 2 processes each rank's
share has 512 entries, so every rank only ever reads dataset rows 0..511: all four
ranks train on the same first quarter of the file (all routine records), the
weights no longer match the rows they are applied to, and the rare class is never
seen.  Nothing fails; the job trains a classifier whose rare-class recall is ~0.

Public sources:
- pytorch/pytorch#77154 "Distributed Weighted Sampler" and pytorch/pytorch#23430
  (no distributed version of WeightedRandomSampler; users combine them by hand).
- Lightning-AI/pytorch-lightning#10946 "How to implement Weighted DistributedSampler?"
  and #12866 "Weighted Random Sampler for ddp".
- discuss.pytorch.org "WeightedRandomSampler + DistributedSampler"
  (https://discuss.pytorch.org/t/weightedrandomsampler-distributedsampler/52817).
- torch.utils.data.WeightedRandomSampler docs: "Samples elements from
  [0,..,len(weights)-1] with given probabilities".

Fix: map the sampled positions back through the shard, e.g. give the DataLoader
torch.utils.data.Subset(train_ds, shard) (whose positions are the sampler's
positions), or yield shard[i] for each i drawn.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset, WeightedRandomSampler

N_ROUTINE, N_INCIDENT, DIM = 1843, 205, 16


def make_data(seed, n0, n1):
    g = torch.Generator().manual_seed(seed)
    direction = torch.zeros(DIM)
    direction[:4] = torch.tensor([1.6, -1.4, 1.2, 1.5])
    x0 = torch.randn(n0, DIM, generator=g)
    x1 = torch.randn(n1, DIM, generator=g) + direction
    x = torch.cat([x0, x1])
    y = torch.cat([torch.zeros(n0, dtype=torch.long), torch.ones(n1, dtype=torch.long)])
    return x, y


def balanced_sampler(labels, rank, world, seed):
    # This rank's share of the data, rebalanced by class.
    shard = list(DistributedSampler(range(len(labels)), num_replicas=world, rank=rank, shuffle=False))
    shard_labels = labels[shard]
    counts = torch.bincount(shard_labels, minlength=2).double()
    weights = (1.0 / counts)[shard_labels]
    gen = torch.Generator().manual_seed(seed + rank)
    return WeightedRandomSampler(weights, num_samples=len(shard), replacement=True, generator=gen)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64, help="global batch size")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(args.seed)

    x, y = make_data(1, N_ROUTINE, N_INCIDENT)
    train_ds = TensorDataset(x, y)
    sampler = balanced_sampler(y, rank, world, args.seed)
    loader = DataLoader(train_ds, batch_size=args.batch_size // world, sampler=sampler)

    model = nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Linear(32, 2))
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=args.lr)

    for epoch in range(args.epochs):
        ddp.train()
        for step, (xb, yb) in enumerate(loader):
            loss = F.cross_entropy(ddp(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if rank == 0 and step % 8 == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)

    if rank == 0:
        xt, yt = make_data(2, 500, 500)
        model.eval()
        with torch.no_grad():
            pred = model(xt).argmax(1)
        routine_acc = (pred[yt == 0] == 0).float().mean().item()
        incident_recall = (pred[yt == 1] == 1).float().mean().item()
        print(f"eval routine_acc={routine_acc:.3f} incident_recall={incident_recall:.3f}", flush=True)
        out = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(out, "model.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
