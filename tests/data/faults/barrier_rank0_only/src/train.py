"""The barrier that should make every rank wait while rank 0 writes the checkpoint is indented
into the `if rank == 0` block: only rank 0 enters it, and its peers meet it with their next
gradient all-reduce instead, so the collectives no longer pair up (an error or a hang).
torch.distributed.barrier, like every collective, must be called by all processes of the group.
Source: https://docs.pytorch.org/docs/stable/distributed.html (collectives "must be called by
all processes in the group") and https://github.com/instructlab/training/pull/566 (barriers
around rank-0 checkpoint saving).
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
args = parser.parse_args()
dist.init_process_group("gloo")
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
checkpoints = os.environ.get("SM_MODEL_DIR", ".")
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
    if rank == 0:  # save a checkpoint at the end of each epoch
        torch.save(model.module.state_dict(), os.path.join(checkpoints, f"epoch-{epoch}.pt"))
        dist.barrier()  # the bug: meant for every rank, reached by rank 0 only
dist.destroy_process_group()
