"""Entry point: a small MLP sharded with torch's FSDP2 (``fully_shard``) on CPU, trained a few
steps on every rank's own slice of random data, saved as a distributed checkpoint (each rank
writes its shard), then converted to one ``torch.save`` file by torch's ``format_utils`` module,
run as a program by rank 0."""

import argparse
import os
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.fsdp import fully_shard

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=6)
parser.add_argument("--lr", type=float, default=0.05)
args = parser.parse_args()

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
for layer in model:
    if isinstance(layer, torch.nn.Linear):
        fully_shard(layer)
fully_shard(model)
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
generator = torch.Generator().manual_seed(100 + rank)
for step in range(args.steps):
    features = torch.randn(8, 16, generator=generator)
    target = features.sum(dim=1, keepdim=True) / 4
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(features), target)
    loss.backward()
    optimizer.step()
    total = loss.detach().clone()
    dist.all_reduce(total)
    if rank == 0:
        print(f"step={step} loss={total.item() / world:.6f}", flush=True)

checkpoint = os.path.join(os.environ["SM_MODEL_DIR"], "dcp")
dcp.save({"model": model.state_dict()}, checkpoint_id=checkpoint)
dist.barrier()
if rank == 0:
    tool = [sys.executable, "-m", "torch.distributed.checkpoint.format_utils", "dcp_to_torch"]
    subprocess.run([*tool, checkpoint, os.path.join(os.environ["SM_MODEL_DIR"], "model.pt")], check=True)
dist.barrier()
dist.destroy_process_group()
