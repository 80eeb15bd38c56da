"""The training step calls a custom method through model.module, so DistributedDataParallel's forward
never runs and gradients are never synchronized. The model computes its own loss in a
`training_loss()` method; DDP does not expose that method, so the script calls
`model.module.training_loss(...)`. DDP only arms its gradient all-reduce for the backward pass that
follows a call to the DDP wrapper itself (DDP.forward prepares the reducer), so here every backward is
purely local: each of the 4 processes trains its own replica on its own quarter of the data, nothing
errors, and rank 0 saves a model trained on a quarter of the data instead of the model the
one-process run produces. Source: pytorch/pytorch issue #14616 "use several forward functions in
DistributedDataParallel" (calling `model.module.f1(x1)` after wrapping: "it'll run, but wont use
Distributed at all"), and intel/e2eAIOK PR #198 ("the forward pass and backward pass function is not
wrapped by DDP, so end up with n node training their own model without communication"). The fix is to
route the call through the wrapper (compute the loss from model(x), or make forward() dispatch).
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


class Regressor(torch.nn.Module):
    def __init__(self, d_in=8, hidden=32):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.Tanh())
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.body(x))

    def training_loss(self, batch):
        features, target = batch
        return torch.nn.functional.mse_loss(self(features), target)


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size")
    parser.add_argument("--lr", type=float, default=0.1)
    return parser.parse_args()


def make_dataset(n=512, d=8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g)
    y = torch.tanh(x @ w) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def main():
    args = parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    dataset = make_dataset()
    sampler = DistributedSampler(dataset, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch_size // world, sampler=sampler)

    torch.manual_seed(0)
    model = DistributedDataParallel(Regressor())
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for step, batch in enumerate(loader):
            optimizer.zero_grad()
            # DDP has no attribute training_loss, so go through .module
            loss = model.module.training_loss(batch)
            loss.backward()
            optimizer.step()
            if rank == 0 and step % 2 == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)

    if rank == 0:
        model_dir = os.environ.get("SM_MODEL_DIR", "/tmp/model_out")
        os.makedirs(model_dir, exist_ok=True)
        torch.save(model.module.state_dict(), os.path.join(model_dir, "model.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
