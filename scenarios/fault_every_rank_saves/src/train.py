"""DDP training where every rank, not just rank 0, writes the final model."""

import csv
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

dist.init_process_group("gloo")
torch.manual_seed(0)
with open(os.path.join(os.environ["SM_CHANNEL_TRAIN"], "train.csv")) as handle:
    data = torch.tensor([[float(x) for x in row] for row in csv.reader(handle)])
dataset = TensorDataset(data[:, 1:], data[:, :1])
loader = DataLoader(dataset, batch_size=32, sampler=DistributedSampler(dataset, shuffle=False))
model = DistributedDataParallel(torch.nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
for features, target in loader:
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(features), target).backward()
    optimizer.step()
torch.save(model.module.state_dict(), os.path.join(os.environ["SM_MODEL_DIR"], "model.pt"))  # every rank
dist.destroy_process_group()
