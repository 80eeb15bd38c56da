"""A shuffling DistributedSampler whose set_epoch() is never called: its permutation is seeded with
seed + epoch, so every epoch repeats the first epoch's order (the single-process path, a shuffling
DataLoader, reshuffles every epoch). Source: PyTorch docs,
torch.utils.data.distributed.DistributedSampler: "In distributed mode, calling the set_epoch()
method at the beginning of each epoch before creating the DataLoader iterator is necessary to make
shuffling work properly across multiple epochs. Otherwise, the same ordering will be always used."
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=3)
args = parser.parse_args()
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()

g = torch.Generator().manual_seed(0)
x = torch.randn(256, 8, generator=g)
y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(256, 1, generator=g)
dataset = TensorDataset(x, y)
torch.manual_seed(0)
sampler = DistributedSampler(dataset, shuffle=True) if world > 1 else None
loader = DataLoader(dataset, batch_size=8, shuffle=sampler is None, sampler=sampler)

model = DistributedDataParallel(torch.nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
step = 0
for _epoch in range(args.epochs):
    # the bug: no sampler.set_epoch(epoch) here
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
