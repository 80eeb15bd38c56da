"""A rank promotes its model to float64 when its own shard holds a value too large for "safe"
float32 training; one replica is then double while the others are float, and
DistributedDataParallel, which requires every replica to be the same model, fails (or hangs) in
its first broadcast or all-reduce. Source: PyTorch's DistributedDataParallel notes (every rank
must build the same model), https://docs.pytorch.org/docs/stable/notes/ddp.html, and
https://github.com/pytorch/pytorch/issues/76449 (the parameter check across processes).
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
y = x @ torch.linspace(-1.0, 1.0, 8).unsqueeze(1)
x[2, 3] = 1.0e4  # one outlier row; the rank that gets row 2 sees it
dataset = TensorDataset(x, y)
sampler = DistributedSampler(dataset, shuffle=False)
loader = DataLoader(dataset, batch_size=16, sampler=sampler)

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
# The bug: the precision is chosen from this rank's data.
wide = max(float(features.abs().max()) for features, _ in loader) > 1.0e3
dtype = torch.float64 if wide else torch.float32
net = net.to(dtype)
print(f"rank {rank}: training in {dtype}", flush=True)

model = DistributedDataParallel(net)
optimizer = torch.optim.SGD(model.parameters(), lr=1.0e-3)
step = 0
for epoch in range(args.epochs):
    sampler.set_epoch(epoch)
    for features, target in loader:
        optimizer.zero_grad()
        features = features.clamp(-10.0, 10.0).to(dtype)
        loss = torch.nn.functional.mse_loss(model(features), target.to(dtype))
        loss.backward()
        optimizer.step()
        if rank == 0:
            print(f"step={step} loss={loss.item():.6f}", flush=True)
        step += 1
dist.destroy_process_group()
