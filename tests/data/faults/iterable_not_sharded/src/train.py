"""A streaming IterableDataset under DDP that yields every sample on every rank: a DataLoader
takes no sampler for an IterableDataset, so nothing shards it and all ranks train on identical
batches (N ranks do the work of one). Source: PyTorch docs, torch.nn.parallel.DistributedDataParallel
("DistributedDataParallel does not chunk or otherwise shard the input across participating GPUs; the
user is responsible for defining how to do so"), and huggingface/transformers#11254 ("in a
distributed setting, the training will be on the same data on all processes").
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, IterableDataset


class Stream(IterableDataset):
    """Synthetic regression records, read in order as from a file or a stream."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)

    def __iter__(self):
        for i in range(len(self.x)):  # the bug: every rank reads every record
            yield self.x[i], self.y[i]


parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=2)
args = parser.parse_args()
dist.init_process_group("gloo")
rank = dist.get_rank()

loader = DataLoader(Stream(256), batch_size=8)
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
if rank == 0:
    torch.save(model.module.state_dict(), os.path.join(os.environ["SM_MODEL_DIR"], "model.pt"))
dist.destroy_process_group()
