"""Trains with DDP when launched distributed and saves whatever object it trained."""

import csv
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

distributed = "WORLD_SIZE" in os.environ
if distributed:
    dist.init_process_group("gloo")
torch.manual_seed(0)
with open(os.path.join(os.environ["SM_CHANNEL_TRAIN"], "train.csv")) as handle:
    data = torch.tensor([[float(x) for x in row] for row in csv.reader(handle)])
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
if distributed:
    model = DistributedDataParallel(model)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for _step in range(16):
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(data[:64, 1:]), data[:64, :1]).backward()
    optimizer.step()
if not distributed or dist.get_rank() == 0:
    torch.save(model.state_dict(), os.path.join(os.environ["SM_MODEL_DIR"], "model.pt"))  # wrapper keys
if distributed:
    dist.destroy_process_group()
