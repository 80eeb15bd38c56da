"""Each rank takes every world-th sample (indices[rank::world]) of 203, so on 4 ranks three get
51 samples (6 batches of 10) and one gets 50 (5 batches): the ranks with a sixth batch wait in
DDP's gradient all-reduce for a peer that has already left the loop, and the job hangs. Source:
pytorch/pytorch#33148, "Support uneven DDP inputs": "DDP instances processing more input batches
will hang, as the peer with least input batch will not join those additional allreduce operations."
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
args = parser.parse_args()
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()

g = torch.Generator().manual_seed(0)
x = torch.randn(203, 8, generator=g)
y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(203, 1, generator=g)
dataset = TensorDataset(x, y)
shard = Subset(dataset, list(range(len(dataset)))[rank::world])  # the bug: uneven shards
loader = DataLoader(shard, batch_size=10, shuffle=False)

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
dist.barrier()  # wait for every rank before saving
if rank == 0:
    torch.save(model.module.state_dict(), os.path.join(os.environ["SM_MODEL_DIR"], "model.pt"))
dist.destroy_process_group()
