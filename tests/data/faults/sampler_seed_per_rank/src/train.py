"""DistributedSampler seeded with the rank: each rank slices its shard out of a different
permutation, so shards overlap and some samples are never drawn. Source: PyTorch docs,
torch.utils.data.distributed.DistributedSampler, seed: "This number should be identical across all
processes in the distributed group"; the bug as found in mlcommons/training#625 ("The
DistributedSampler seed should be the same across all workers, else the data split is not
exclusive... printing out the indexes read by each worker shows overlap").
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=2)
args = parser.parse_args()
dist.init_process_group("gloo")
rank = dist.get_rank()

g = torch.Generator().manual_seed(0)
x = torch.randn(256, 8, generator=g)
y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(256, 1, generator=g)
dataset = TensorDataset(x, y)
sampler = DistributedSampler(dataset, shuffle=True, seed=rank)  # the bug: a seed per rank
loader = DataLoader(dataset, batch_size=8, sampler=sampler)

torch.manual_seed(0)
model = DistributedDataParallel(torch.nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
step = 0
for epoch in range(args.epochs):
    sampler.set_epoch(epoch)
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
