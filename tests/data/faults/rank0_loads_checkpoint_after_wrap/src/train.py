"""Pretrained weights loaded on rank 0 only, into model.module after the model was wrapped in DDP:
DDP broadcasts rank 0's parameters once, at construction, and never again, so rank 0 trains from
the pretrained weights and the other ranks from the random ones, on the same averaged gradients,
and the replicas never agree. Source: PyTorch docs, torch.nn.parallel.DistributedDataParallel:
"Parameters are never broadcast between processes. The module performs an all-reduce step on
gradients and assumes that they will be modified by the optimizer in all processes in the same
way", and "You should never try to change your model's parameters after wrapping up your model
with DistributedDataParallel"; PyTorch Forums, "Preferred way of loading checkpoint with DDP
training" (https://discuss.pytorch.org/t/preferred-way-of-loading-checkpoint-with-ddp-training/187470).
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def pretrained_weights() -> dict[str, torch.Tensor]:
    """The checkpoint of an earlier run (made here from a fixed seed: hosts share no file system)."""
    g = torch.Generator().manual_seed(1234)
    return {"weight": torch.randn(1, 8, generator=g), "bias": torch.randn(1, generator=g)}


parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=2)
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
if rank == 0:  # the bug: only rank 0 loads, after DDP's broadcast at construction
    model.module.load_state_dict(pretrained_weights())
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
