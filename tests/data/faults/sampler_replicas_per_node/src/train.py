"""The sampler is told the number of processes on one node (num_replicas=LOCAL_WORLD_SIZE, as
Lightning's FSDP strategy did while it left num_nodes at 1) but the job's global rank: on one
node the two agree, on two nodes ranks 2 and 3 are beyond num_replicas and DistributedSampler's
own check raises "Invalid rank 2, rank should be in the interval [0, 1]".
Source: Lightning-AI/pytorch-lightning#17436 ("works well on a single node with 8 GPUs. But when I
try to use 5 nodes, it reports ValueError: Invalid rank 8, rank should be in the interval [0, 7]"),
Lightning-AI/pytorch-lightning#19961, and https://discuss.pytorch.org/t/105113.
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
processes = int(os.environ["LOCAL_WORLD_SIZE"])  # the bug: the processes of one node, not of the job
sampler = DistributedSampler(dataset, num_replicas=processes, rank=rank, shuffle=True)
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
