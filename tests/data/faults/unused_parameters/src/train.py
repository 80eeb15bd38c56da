"""A model whose outlier head runs only on batches that contain an outlier: under
DistributedDataParallel without find_unused_parameters=True, the ranks whose batches hold none
never produce gradients for the head, and the next forward raises "Expected to have finished
reduction in the prior iteration before starting a new one". Source:
https://github.com/pytorch/pytorch/issues/22049 and the find_unused_parameters notes of
https://docs.pytorch.org/docs/stable/generated/torch.nn.parallel.DistributedDataParallel.html
"""

import argparse

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(8, 1)
        self.outlier_head = torch.nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        outliers = x[:, 0].abs() > 4.0
        if outliers.any():  # data-dependent branch: some batches never reach these parameters
            out = out + outliers.unsqueeze(1) * self.outlier_head(x)
        return out


parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
args = parser.parse_args()
dist.init_process_group("gloo")
rank = dist.get_rank()

g = torch.Generator().manual_seed(0)
x = torch.randn(256, 8, generator=g).clamp(-3.0, 3.0)
x[::32, 0] = 5.0  # one outlier every 32 rows: in every batch of 32, but all on the rank that gets row 0
y = x @ torch.linspace(-1.0, 1.0, 8).unsqueeze(1)
dataset = TensorDataset(x, y)
sampler = DistributedSampler(dataset, shuffle=False)
loader = DataLoader(dataset, batch_size=32, sampler=sampler)

torch.manual_seed(0)
model = DistributedDataParallel(Net())  # find_unused_parameters defaults to False
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
step = 0
for _epoch in range(args.epochs):
    for features, target in loader:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(features), target)
        loss.backward()
        optimizer.step()
        if rank == 0:
            print(f"step={step} loss={loss.item():.6f}", flush=True)
        step += 1
dist.destroy_process_group()
