"""Tabular classifier with linear warm-up + cosine learning-rate decay.

What goes wrong
---------------
The length of the learning-rate schedule is computed with the single-device
formula ``epochs * ceil(len(train_set) / batch_size)``.  Under torchrun the
DistributedSampler gives every rank only ``1/WORLD_SIZE`` of the samples, so the
loop performs ``WORLD_SIZE`` times fewer optimizer steps than the scheduler was
told about.  With 2 hosts x 2 processes the run stops after 25 % of the
schedule: warm-up ends, the cosine decay has barely started, and the job
finishes (and saves) at ~85 % of the peak learning rate instead of annealing to
zero.  Nothing crashes; the model is simply trained with a different schedule
than the one-process run, which consumes the identical global batches.  At
world size 1 ``len(train_set) / batch_size`` *is* the number of steps, so the
bug is invisible there.

Public sources
--------------
* Lightning-AI/pytorch-lightning issue #2149, "How do I set the steps_per_epoch
  parameter of a lr scheduler in multi-GPU environment?"
  https://github.com/Lightning-AI/pytorch-lightning/issues/2149
* huggingface/diffusers issue #6137, "Inaccurate `num_train_steps` in the LR
  scheduler during multi-GPU parallelism" (cosine never reaches 0)
  https://github.com/huggingface/diffusers/issues/6137
* huggingface/diffusers PR #8312, "fix(training): lr scheduler doesn't work
  properly in distributed scenarios" (LR decays num_processes times slower)
  https://github.com/huggingface/diffusers/pull/8312

Fix
---
Size the schedule from what each process actually iterates:
``total_steps = args.epochs * len(train_loader)`` (the loader built on the
DistributedSampler), i.e. divide by the world size.
"""

import argparse
import math
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


def make_data(n=4096, d=32, classes=4, seed=1234):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    teacher = torch.randn(d, classes, generator=g)
    logits = x @ teacher + 0.5 * torch.randn(n, classes, generator=g)
    return TensorDataset(x, logits.argmax(1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--warmup-frac", type=float, default=0.1)
    args, _ = p.parse_known_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)

    train_set = make_data()
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, drop_last=True)

    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)

    # total optimizer steps for the run: warm-up, then cosine decay to zero
    steps_per_epoch = math.ceil(len(train_set) / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    warmup = max(1, int(args.warmup_frac * total_steps))

    def lr_lambda(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    loss_fn = nn.CrossEntropyLoss()

    step = 0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        ddp.train()
        for x, y in loader:
            loss = loss_fn(ddp(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if rank == 0 and step % 8 == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f} lr={sched.get_last_lr()[0]:.4f}", flush=True)
            step += 1
        if rank == 0:
            print(f"epoch={epoch} done steps={step} lr={sched.get_last_lr()[0]:.4f}", flush=True)

    if rank == 0:
        out = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(out, "model.pt"))
        print(f"saved model to {out}/model.pt", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
