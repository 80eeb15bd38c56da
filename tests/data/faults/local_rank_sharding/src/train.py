"""The sampler is sharded by host-local coordinates (num_replicas=LOCAL_WORLD_SIZE,
rank=LOCAL_RANK): on one host that is right, on two hosts each host's ranks cover the whole
dataset between them, so ranks 0 and 2 (and 1 and 3) draw the same shard and every sample is
drawn twice per epoch. Source: vllm-project/speculators#427 ("Fix local_rank usage in distributed
batch sampler for multi-node training": "local_rank is per-node ..., so processes on different
nodes with the same local_rank receive identical data shards"; "Single-node training is unaffected").
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
sampler = DistributedSampler(  # the bug: the host's coordinates, not the job's
    dataset, num_replicas=int(os.environ["LOCAL_WORLD_SIZE"]), rank=int(os.environ["LOCAL_RANK"]), shuffle=True
)
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
