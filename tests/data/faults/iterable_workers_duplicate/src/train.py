"""A streaming IterableDataset that splits its records by rank when distributed (and by DataLoader
worker only when it is not), read through DataLoader(num_workers=2): each worker process holds
its own copy of the dataset and yields the rank's whole shard, so every sample is drawn twice on
each rank. Source: PyTorch docs, torch.utils.data.IterableDataset: "When num_workers > 0, each
worker process will have a different copy of the dataset object, so it is often desired to
configure each copy independently to avoid having duplicate data returned from the workers."
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, IterableDataset, get_worker_info


class ShardedStream(IterableDataset):
    """Synthetic regression records, read in order as from a file or a stream."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
        self.rank, self.world = rank, world

    def __iter__(self):
        if self.world > 1:
            indices = range(self.rank, len(self.x), self.world)  # the bug: split by rank, not by worker
        else:
            worker = get_worker_info()
            indices = range(len(self.x)) if worker is None else range(worker.id, len(self.x), worker.num_workers)
        for i in indices:
            yield self.x[i], self.y[i]


parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=2)
args = parser.parse_args()
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()

loader = DataLoader(ShardedStream(256, rank, world), batch_size=8, num_workers=2)
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
