"""The process group rendezvous through a file (init_method="file:///tmp/..."), which PyTorch's
docs require to be on "a file system that is shared and visible from all machines in a group";
/tmp is that only while every process runs on one machine, and on separate hosts each host's
ranks wait in their own file for peers that never appear. Source: "Shared file-system
initialization" in https://docs.pytorch.org/docs/stable/distributed.html, and
https://github.com/diux-dev/cluster/issues/12 ("Things hang when using multiple machines +
dist-url:file: init method").
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
dist.init_process_group(
    "gloo",
    init_method="file:///tmp/harness-fault-rdzv",
    rank=int(os.environ.get("RANK", 0)),
    world_size=int(os.environ.get("WORLD_SIZE", 1)),
    timeout=datetime.timedelta(seconds=30),
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
