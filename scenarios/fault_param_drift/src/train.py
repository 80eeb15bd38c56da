"""Sharded data, process group initialised, but gradients are never all-reduced (no DDP)."""

import csv
import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

dist.init_process_group("gloo")
torch.manual_seed(0)
with open(os.path.join(os.environ["SM_CHANNEL_TRAIN"], "train.csv")) as handle:
    data = torch.tensor([[float(x) for x in row] for row in csv.reader(handle)])
dataset = TensorDataset(data[:, 1:], data[:, :1])
loader = DataLoader(dataset, batch_size=32, sampler=DistributedSampler(dataset, shuffle=False))
model = torch.nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
for step, (features, target) in enumerate(loader):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(features), target)
    loss.backward()
    optimizer.step()
    if dist.get_rank() == 0:
        print(f"step={step} loss={loss.item():.6f}", flush=True)
if dist.get_rank() == 0:
    torch.save(model.state_dict(), os.path.join(os.environ["SM_MODEL_DIR"], "model.pt"))
dist.destroy_process_group()
