"""Only rank 0 runs validation, and it runs it through the DistributedDataParallel wrapper
(model.eval(); model(x)): with BatchNorm buffers and broadcast_buffers=True (the default) DDP's
forward broadcasts the buffers from rank 0, a collective the other ranks, already back in
training, never issue in step, so the collectives stop pairing up (an error or a hang). Source:
https://github.com/pytorch/pytorch/issues/30718 (DDP broadcasts buffers in forward) and the
validation hang in https://discuss.pytorch.org/t/validation-hangs-up-when-using-ddp-and-syncbatchnorm/104831
(cited in https://github.com/pytorch/pytorch/issues/48988).
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
x = torch.randn(320, 8, generator=g)
y = x @ torch.linspace(-1.0, 1.0, 8).unsqueeze(1)
train = TensorDataset(x[:256], y[:256])
val_x, val_y = x[256:], y[256:]
sampler = DistributedSampler(train, shuffle=False)
loader = DataLoader(train, batch_size=16, sampler=sampler)

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
model = DistributedDataParallel(net)  # broadcast_buffers=True by default
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
step = 0
for epoch in range(args.epochs):
    sampler.set_epoch(epoch)
    model.train()
    for features, target in loader:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(features), target)
        loss.backward()
        optimizer.step()
        if rank == 0:
            print(f"step={step} loss={loss.item():.6f}", flush=True)
        step += 1
    if rank == 0:  # the bug: validation on rank 0 only, through the DDP wrapper
        model.eval()
        val_loss = torch.nn.functional.mse_loss(model(val_x), val_y)
        print(f"epoch={epoch} val_loss={val_loss.item():.6f}", flush=True)
dist.destroy_process_group()
