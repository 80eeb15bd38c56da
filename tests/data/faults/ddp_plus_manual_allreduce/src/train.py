"""DDP plus a gradient all-reduce left over from a hand-rolled version: DDP has already averaged
the gradients in backward, and summing them again over ranks makes them world-size times the
single-process gradient at an equal global batch. Source: PyTorch Forums, "Optimizers and
multiprocessing: should I manually average gradients?"
(https://discuss.pytorch.org/t/optimizers-and-multiprocessing-should-i-manually-average-gradients/47248):
"If you use it in combination with torch.nn.parallel.DistributedDataParallel then gradient
synchronization and averaging is done for you."
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
rank, world = dist.get_rank(), dist.get_world_size()

g = torch.Generator().manual_seed(0)
x = torch.randn(256, 8, generator=g)
y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(256, 1, generator=g)
dataset = TensorDataset(x, y)
sampler = DistributedSampler(dataset, shuffle=True, seed=0)
loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)

torch.manual_seed(0)
model = DistributedDataParallel(torch.nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
step = 0
for epoch in range(args.epochs):
    sampler.set_epoch(epoch)
    for features, target in loader:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(features), target)
        loss.backward()  # DDP all-reduces and averages the gradients here
        for param in model.parameters():
            dist.all_reduce(param.grad)  # the bug: and they are summed over ranks once more
        optimizer.step()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        if rank == 0:
            print(f"step={step} loss={mean_loss.item() / world:.6f}", flush=True)
        step += 1
if rank == 0:
    torch.save(model.module.state_dict(), os.path.join(os.environ["SM_MODEL_DIR"], "model.pt"))
dist.destroy_process_group()
