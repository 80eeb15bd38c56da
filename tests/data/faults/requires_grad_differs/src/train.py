""" "Freeze the backbone when the rare class is missing" is decided from the labels in this rank's
shard, so rank 0 freezes the first layer and its peers do not; DistributedDataParallel registers
only parameters that require grad, so the ranks hand it different parameter lists and it fails
(or hangs) at construction. Source: PyTorch's parameter check in DDP's constructor,
https://github.com/pytorch/pytorch/issues/73547 ("mismatched number of parameters in DDP"), and
https://github.com/pytorch/pytorch/issues/68803 (different parameter sets across ranks, a hang).
"""

import argparse

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
args = parser.parse_args()
dist.init_process_group("gloo")
rank = dist.get_rank()

g = torch.Generator().manual_seed(0)
x = torch.randn(256, 8, generator=g)
y = (x[:, 0] > 0).long()
rare = torch.tensor([1, 6, 11, 13, 18, 23, 35, 42])  # rows of class 2; none is a multiple of 4
y[rare] = 2
dataset = TensorDataset(x, y)
sampler = DistributedSampler(dataset, shuffle=False)
loader = DataLoader(dataset, batch_size=16, sampler=sampler)

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
# The bug: a rank-local fact decides which parameters train.
shard_labels = torch.cat([labels for _, labels in loader])
freeze_backbone = not bool((shard_labels == 2).any())
if freeze_backbone:
    for p in net[0].parameters():
        p.requires_grad_(False)
print(f"rank {rank}: freeze_backbone={freeze_backbone}", flush=True)

model = DistributedDataParallel(net)
optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
step = 0
for epoch in range(args.epochs):
    sampler.set_epoch(epoch)
    for features, labels in loader:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(features), labels)
        loss.backward()
        optimizer.step()
        if rank == 0:
            print(f"step={step} loss={loss.item():.6f}", flush=True)
        step += 1
dist.destroy_process_group()
