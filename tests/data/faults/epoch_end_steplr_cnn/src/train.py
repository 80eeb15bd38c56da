"""Small CNN on synthetic 12x12 pattern images, SGD with an epoch-level StepLR.

What goes wrong
---------------
The end-of-epoch housekeeping (validation, logging the learning rate and the
StepLR ``scheduler.step()``) was gathered into one ``if rank == 0:`` block.  The
learning rate lives in each process's own optimizer, so only rank 0's optimizer
decays; ranks 1..N-1 carry on with the undecayed rate.  DDP averages the
gradients, so every rank applies the *same* gradient, but scaled by a different
learning rate: from the first step of epoch 2 the replicas move apart (rank 0
takes steps 5x smaller than its peers), and since DDP never re-broadcasts
parameters they stay apart, each computing its next gradient at different
weights.  Nothing errors; rank 0 logs the decayed rate and saves its own replica,
which is not the model a single process would have trained with the same global
batch.  With one process the scheduler steps in the only process, so the
single-process run is correct.

Public sources
--------------
* huggingface/accelerate issue #94 "learning rate decay": asked whether the
  learning rate should be changed on the main process or all processes, the
  maintainer answered "You should do it in all processes, so that they all use
  the same learning rate, otherwise the copies of your model in each process
  will diverge." https://github.com/huggingface/accelerate/issues/94
* PyTorch DDP notes: DDP synchronises gradients only; parameters are broadcast
  from rank 0 once, at construction
  (https://pytorch.org/docs/stable/notes/ddp.html).

Fix
---
Call ``scheduler.step()`` on every rank (outside the ``if rank == 0:`` block);
keep only printing/saving under rank 0.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

N_CLASSES = 5


def make_data(n, seed):
    # Each class is a fixed 12x12 template; samples are shifted, scaled, noisy copies.
    templates = torch.randn(N_CLASSES, 1, 12, 12, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    x = templates[y] * (0.5 + torch.rand(n, 1, 1, 1, generator=g))
    shifts = torch.randint(-1, 2, (n, 2), generator=g)
    x = torch.stack([torch.roll(x[i], tuple(shifts[i].tolist()), dims=(1, 2)) for i in range(n)])
    x = x + 0.6 * torch.randn(x.shape, generator=g)
    return TensorDataset(x, y)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, N_CLASSES)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--global-batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--lr-decay", type=float, default=0.2)
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    train_ds, val_ds = make_data(2048, 0), make_data(512, 1)
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(train_ds, batch_size=args.global_batch_size // world, sampler=sampler)

    torch.manual_seed(0)
    model = SmallCNN()
    ddp = DDP(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=args.lr_decay)
    loss_fn = nn.CrossEntropyLoss()

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        ddp.train()
        for step, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            loss = loss_fn(ddp(x), y)
            loss.backward()
            optimizer.step()
            if rank == 0 and step % 8 == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)

        # End-of-epoch housekeeping on the main process.
        if rank == 0:
            model.eval()
            with torch.no_grad():
                xv, yv = val_ds.tensors
                logits = model(xv)
            print(
                f"epoch={epoch} lr={scheduler.get_last_lr()[0]:.4f} "
                f"val_loss={loss_fn(logits, yv).item():.4f} "
                f"val_acc={(logits.argmax(1) == yv).float().mean().item():.4f}",
                flush=True,
            )
            scheduler.step()

    if rank == 0:
        out = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(out, "model.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
