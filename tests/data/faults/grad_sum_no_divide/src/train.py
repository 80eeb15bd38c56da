"""Data parallelism by hand, without DDP: parameters broadcast from rank 0, then after each
backward every gradient is all-reduced (SUM) but never divided by the world size, so the update is
world-size times the single-process one at an equal global batch. Source: the synchronous SGD
example of PyTorch's tutorial "Writing Distributed Applications with PyTorch", whose
average_gradients() follows the all_reduce(param.grad.data, op=SUM) with param.grad.data /= size
(seba-1511/dist_tuto.pth, train_dist.py).
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--batch-size", type=int, default=8, help="per process")
args = parser.parse_args()
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()

g = torch.Generator().manual_seed(0)
x = torch.randn(256, 8, generator=g)
y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(256, 1, generator=g)
dataset = TensorDataset(x, y)
sampler = DistributedSampler(dataset, shuffle=True, seed=0)
loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)

torch.manual_seed(0)
model = torch.nn.Linear(8, 1)
for param in model.parameters():
    dist.broadcast(param.data, src=0)  # every replica starts from rank 0's weights
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
step = 0
for epoch in range(args.epochs):
    sampler.set_epoch(epoch)
    for features, target in loader:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(features), target)
        loss.backward()
        for param in model.parameters():
            dist.all_reduce(param.grad.data, op=dist.ReduceOp.SUM)  # the bug: never divided by world
        optimizer.step()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        if rank == 0:
            print(f"step={step} loss={mean_loss.item() / world:.6f}", flush=True)
        step += 1
if rank == 0:
    torch.save(model.state_dict(), os.path.join(os.environ["SM_MODEL_DIR"], "model.pt"))
dist.destroy_process_group()
