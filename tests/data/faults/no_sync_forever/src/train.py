"""Gradient accumulation that runs every micro-step's backward inside DDP's no_sync(), the last
one before optimizer.step() included: gradients are never all-reduced, so each replica steps on
its own shard's gradient and the replicas drift apart. Source: PyTorch docs,
DistributedDataParallel.no_sync: "Within this context, gradients will be accumulated on module
variables, which will later be synchronized in the first forward-backward pass exiting the
context"; the bug in modelscope/FunASR#3472 ("fix(train): align DDP no_sync with gradient
accumulation": the old condition "suppresses synchronization on the optimizer-step microbatch,
leaving rank-local accumulated gradients").
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--accumulation-steps", type=int, default=2)
args = parser.parse_args()
dist.init_process_group("gloo")
rank = dist.get_rank()

g = torch.Generator().manual_seed(0)
x = torch.randn(256, 8, generator=g)
y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(256, 1, generator=g)
dataset = TensorDataset(x, y)
sampler = DistributedSampler(dataset, shuffle=True, seed=0)
loader = DataLoader(dataset, batch_size=8, sampler=sampler)

torch.manual_seed(0)
model = DistributedDataParallel(torch.nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
step = 0
for epoch in range(args.epochs):
    sampler.set_epoch(epoch)
    for micro, (features, target) in enumerate(loader):
        with model.no_sync():  # the bug: the optimizer-step micro-batch must run outside no_sync
            loss = torch.nn.functional.mse_loss(model(features), target) / args.accumulation_steps
            loss.backward()
        if (micro + 1) % args.accumulation_steps == 0:
            optimizer.step()
            optimizer.zero_grad()
            if rank == 0:
                print(f"step={step} loss={loss.item() * args.accumulation_steps:.6f}", flush=True)
            step += 1
if rank == 0:
    torch.save(model.module.state_dict(), os.path.join(os.environ["SM_MODEL_DIR"], "model.pt"))
dist.destroy_process_group()
