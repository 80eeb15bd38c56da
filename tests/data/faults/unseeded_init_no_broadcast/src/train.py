"""Data parallelism by hand: gradients are all-reduced and averaged every step, but the model is
built without a seed and its initial weights are never broadcast from rank 0 (which
DistributedDataParallel's constructor does), so each replica starts from different weights and,
applying the same averaged update, stays different. Source: the construction step of
https://docs.pytorch.org/docs/stable/notes/ddp.html (the constructor broadcasts rank 0's
state_dict() so that every replica starts from the same state) and
https://discuss.pytorch.org/t/proper-distributeddataparallel-usage/74564/2 ("Rank 0 will
broadcast model states to all other ranks when you construct DDP ... DDP only syncs grad").
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
args = parser.parse_args()
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()

g = torch.Generator().manual_seed(0)
x = torch.randn(256, 8, generator=g)
y = x @ torch.linspace(-1.0, 1.0, 8).unsqueeze(1)
dataset = TensorDataset(x, y)
sampler = DistributedSampler(dataset, shuffle=False)
loader = DataLoader(dataset, batch_size=16, sampler=sampler)

model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))  # no seed
# The bug: no dist.broadcast of the initial parameters from rank 0.
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
step = 0
for epoch in range(args.epochs):
    sampler.set_epoch(epoch)
    for features, target in loader:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(features), target)
        loss.backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= world
        optimizer.step()
        if rank == 0:
            print(f"step={step} loss={loss.item():.6f}", flush=True)
        step += 1
if rank == 0:
    torch.save(model.state_dict(), os.path.join(os.environ.get("SM_MODEL_DIR", "."), "model.pt"))
dist.destroy_process_group()
