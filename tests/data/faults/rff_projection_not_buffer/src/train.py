"""Random-Fourier-feature regressor trained with DistributedDataParallel.

What goes wrong
---------------
The model's random projection matrix (the frequencies of its Fourier features)
is kept as a plain tensor attribute (``self.freqs = torch.randn(...)``) instead of
a registered buffer, and the script seeds every process with ``seed + rank`` so
that dropout and input noise differ per rank. DDP makes replicas identical by
broadcasting rank 0's ``state_dict`` (parameters and registered buffers) at
construction and buffers on every forward; a plain attribute is neither, so each
rank keeps its own random projection. The ranks then compute gradients for the
same linear head on four *different* feature maps, DDP averages them, and the
head fits none of them. Rank 0 saves a head averaged across four feature spaces,
and model.pt does not even contain the projection. At one process (rank 0,
seed + 0) nothing is inconsistent and training is normal; at 2x2 the loss is
much worse and the saved model does not reproduce it. No error or warning.

Public sources
--------------
* PyTorch DDP design notes / discuss.pytorch.org "Model and optimizer parameters
  synchronization at start" (DDP broadcasts rank 0's state_dict at construction;
  anything else must be identical by construction).
* discuss.pytorch.org "DistributedDataParallel broadcast_buffers" (only registered
  buffers are synchronised).
* PyTorch docs nn.Module.register_buffer: state that is not a parameter but must
  be part of the module's state (saved, moved, synchronised) has to be registered.

Fix
---
``self.register_buffer("freqs", torch.randn(...) * scale)`` (DDP then broadcasts
rank 0's copy and it is saved in model.pt); or build the model before the
per-rank seeding / from a fixed generator.
"""

import argparse
import math
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def make_data(n=2048, d=4):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, d, generator=g) * 4 - 2
    y = torch.sin(2 * x[:, :1]) * torch.cos(x[:, 1:2]) + 0.5 * x[:, 2:3] * x[:, 3:4]
    y = y + 0.05 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


class FourierRegressor(nn.Module):
    def __init__(self, d_in=4, n_features=256, scale=1.5):
        super().__init__()
        # fixed (non-trainable) random projection, as in random Fourier features
        self.freqs = torch.randn(d_in, n_features) * scale
        self.phase = 2 * math.pi * torch.rand(n_features)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(n_features, 1)

    def forward(self, x):
        z = torch.cos(x @ self.freqs + self.phase) * math.sqrt(2.0 / self.freqs.shape[1])
        return self.head(self.drop(z))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=17)
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    # different dropout masks / input noise on every rank
    torch.manual_seed(args.seed + rank)

    ds = make_data()
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(ds, batch_size=args.batch_size, sampler=sampler)

    model = DDP(FourierRegressor())
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.MSELoss()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        for step, (x, y) in enumerate(loader):
            x = x + 0.01 * torch.randn_like(x)  # light input jitter
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            if rank == 0 and step % 8 == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)

    if rank == 0:
        out = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out, exist_ok=True)
        torch.save(model.module.state_dict(), os.path.join(out, "model.pt"))
        print("saved", os.path.join(out, "model.pt"), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
