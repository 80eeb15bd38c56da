"""Rank 0 computes the normalisation statistics, writes them to a scratch file under /tmp, and
every rank reads that file after a barrier: the "rank 0 prepares, the others wait then read"
pattern assumes one file system visible from every host, which /tmp is only while the hosts are
one machine; on separate hosts the other host's ranks find no file (or one a previous job left).
Source: https://github.com/NVIDIA/Megatron-LM/pull/246 ("when each node uses an isolated file
system, the nodes except for master node cannot access" the files rank 0 builds) and
https://github.com/NVIDIA/Megatron-LM/issues/1355 (FileNotFoundError on the second node).
"""

import argparse
import json

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

STATS = "/tmp/harness-fault-norm-stats.json"

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
args = parser.parse_args()
dist.init_process_group("gloo")
rank = dist.get_rank()

g = torch.Generator().manual_seed(0)
x = torch.randn(256, 8, generator=g) * 3.0 + 1.5
y = (x - 1.5) @ torch.linspace(-1.0, 1.0, 8).unsqueeze(1) / 3.0

if rank == 0:  # rank 0 prepares the statistics once, for everyone
    with open(STATS, "w") as handle:
        json.dump({"mean": x.mean(dim=0).tolist(), "std": x.std(dim=0).tolist()}, handle)
dist.barrier()
with open(STATS) as handle:  # every rank, on every host, reads rank 0's file
    stats = json.load(handle)
x = (x - torch.tensor(stats["mean"])) / torch.tensor(stats["std"])

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
