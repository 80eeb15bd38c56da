"""Hand-rolled shard: every rank shuffles the indices with a generator seeded by its rank, then
takes the contiguous slice [rank * n / world, (rank + 1) * n / world): the slices are cut from
different permutations, so they overlap and some samples are never drawn. Source: the overlap
Lightning fixed in Lightning-AI/pytorch-lightning#17713 ("Fix overlapping samples in DDP when no
global seed is set": ranks that shuffle with different seeds draw overlapping data), and
NVlabs/LongLive#71 ("With different seeds, samples can overlap between ranks and other samples can
be skipped").
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=2)
args = parser.parse_args()
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()

g = torch.Generator().manual_seed(0)
x = torch.randn(256, 8, generator=g)
y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(256, 1, generator=g)
dataset = TensorDataset(x, y)
n = len(dataset)
order = torch.randperm(n, generator=torch.Generator().manual_seed(rank))  # the bug: a permutation per rank
shard = Subset(dataset, order[rank * n // world : (rank + 1) * n // world].tolist())
loader = DataLoader(shard, batch_size=8, shuffle=False)

torch.manual_seed(0)
model = DistributedDataParallel(torch.nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
step = 0
for _epoch in range(args.epochs):
    for features, target in loader:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(features), target)
        loss.backward()
        optimizer.step()
        if rank == 0:
            print(f"step={step} loss={loss.item():.6f}", flush=True)
        step += 1
if rank == 0:
    torch.save(model.module.state_dict(), os.path.join(os.environ["SM_MODEL_DIR"], "model.pt"))
dist.destroy_process_group()
