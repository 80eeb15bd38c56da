"""A loss summed over the batch (reduction="sum") under DDP, which averages gradients over ranks:
at an equal global batch the distributed gradient is world-size times smaller than one process's,
so the distributed run learns that much slower. Source: PyTorch docs,
torch.nn.parallel.DistributedDataParallel: "When a model is trained on M nodes with batch=N, the
gradient will be M times smaller when compared to the same model trained on a single node with
batch=M*N if the loss is summed (NOT averaged as usual) across instances in a batch (because the
gradients between different nodes are averaged)."
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--batch-size", type=int, default=8, help="per process")
args = parser.parse_args()
dist.init_process_group("gloo")
rank = dist.get_rank()

g = torch.Generator().manual_seed(0)
x = torch.randn(256, 8, generator=g)
y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(256, 1, generator=g)
dataset = TensorDataset(x, y)
sampler = DistributedSampler(dataset, shuffle=True, seed=0)
loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)

torch.manual_seed(0)
model = DistributedDataParallel(torch.nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.002)
step = 0
for epoch in range(args.epochs):
    sampler.set_epoch(epoch)
    for features, target in loader:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(features), target, reduction="sum")  # the bug
        loss.backward()
        optimizer.step()
        total = loss.detach().clone()
        dist.all_reduce(total)  # the loss of the global batch
        if rank == 0:
            print(f"step={step} loss={total.item():.6f}", flush=True)
        step += 1
if rank == 0:
    torch.save(model.module.state_dict(), os.path.join(os.environ["SM_MODEL_DIR"], "model.pt"))
dist.destroy_process_group()
