"""WORLD_SIZE taken as the number of nodes, as Kubeflow's PyTorchJob sets it (the replica count),
and multiplied by the processes per node; torchrun already sets it to the number of processes,
so the process group expects nodes x processes x processes ranks and its rendezvous never
completes. Source: https://github.com/kubeflow/trainer/issues/1790 ("The WORLD_SIZE environment
variable in PyTorch is different from its definition").
"""

import argparse
import datetime
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
args = parser.parse_args()
nodes = int(os.environ.get("WORLD_SIZE", 1))  # the bug: this is already the number of processes
procs_per_node = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
dist.init_process_group(
    "gloo",
    world_size=nodes * procs_per_node,
    rank=int(os.environ.get("RANK", 0)),
    timeout=datetime.timedelta(seconds=20),
)
rank = dist.get_rank()

g = torch.Generator().manual_seed(0)
x = torch.randn(256, 8, generator=g)
y = x @ torch.linspace(-1.0, 1.0, 8).unsqueeze(1)
dataset = TensorDataset(x, y)
sampler = DistributedSampler(dataset, shuffle=False)
loader = DataLoader(dataset, batch_size=16, sampler=sampler)

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
dist.destroy_process_group()
