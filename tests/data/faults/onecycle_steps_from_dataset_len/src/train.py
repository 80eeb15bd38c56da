"""Tabular regressor trained with gradient accumulation and a OneCycle LR schedule, DDP.

The fault
---------
OneCycleLR must be told exactly how many optimizer steps the run will take.  The script
derives it arithmetically from the dataset size:
``len(train_set) // (batch_size * world_size * accum_steps)``.
With one process (992 samples, batch 16, accumulation 2) that is exactly the 31
optimizer steps per epoch the loop takes.  Under DDP the per-rank epoch is not
``len/world`` floored: DistributedSampler pads every shard up to ceil(992/4)=248 samples
and the DataLoader keeps the short last batch (248/16 = 15.5 -> 16 micro-batches -> 8
optimizer steps), whereas the formula says 7.  The schedule is one step short per
epoch, and in the last epoch ``scheduler.step()`` raises
``ValueError: Tried to step 15 times. The specified number of total steps is 14`` - an
error that looks like a mis-set epochs/steps hyperparameter and only appears at the end
of training (after all the compute has been spent), on every rank.

Public sources
--------------
- huggingface/accelerate PR #385 "Fix OneCycle step length when in multiprocess"
  (OneCycle "will raise an issue when called more than this ... when the user did not
  specify drop_last=True").
- Lightning-AI/pytorch-lightning issue #2149 "How do I set the steps_per_epoch parameter
  of a lr scheduler in multi-GPU environment?" and issue #3205 "OneCycleLR scheduler looks
  wrong" (steps_per_epoch=int(ds_len/total_bs)).
- chengtan9907/OpenSTL PR #184 "Fix: Corrected OneCycleLR scheduler step calculation"
  ("prevents scheduler step limit errors in distributed training scenarios").
- huggingface/diffusers PR #8312 (scheduler length must be computed from the sharded
  dataloader, not the global dataset).

Fix
---
Count the optimizer steps from the sharded loader itself:
``steps_per_epoch = math.ceil(len(train_loader) / accum_steps)`` (after the
DistributedSampler is attached), or use drop_last consistently in both sampler/loader
and formula.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def make_data(n=992, dim=12, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, 1, generator=g)
    y = torch.tanh(x @ w) + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)  # per process, per micro-batch
    parser.add_argument("--accum-steps", type=int, default=2)
    parser.add_argument("--max-lr", type=float, default=0.01)
    args, _ = parser.parse_known_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    world_size = dist.get_world_size()
    torch.manual_seed(0)

    x, y = make_data()
    train_set = TensorDataset(x, y)
    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler)

    model = nn.Sequential(nn.Linear(x.shape[1], 64), nn.ReLU(), nn.Linear(64, 1))
    ddp_model = DDP(model)
    optimizer = torch.optim.AdamW(ddp_model.parameters(), lr=args.max_lr)

    # one optimizer step consumes batch_size * world_size * accum_steps samples
    samples_per_step = args.batch_size * world_size * args.accum_steps
    steps_per_epoch = len(train_set) // samples_per_step
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.max_lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch
    )
    if rank == 0:
        print(f"optimizer steps per epoch={steps_per_epoch} total={args.epochs * steps_per_epoch}", flush=True)

    opt_step = 0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        optimizer.zero_grad()
        for i, (xb, yb) in enumerate(loader):
            loss = F.mse_loss(ddp_model(xb), yb) / args.accum_steps
            loss.backward()
            if (i + 1) % args.accum_steps == 0:
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                opt_step += 1
                if rank == 0 and opt_step % 4 == 0:
                    print(
                        f"epoch={epoch} step={opt_step} loss={loss.item() * args.accum_steps:.4f} "
                        f"lr={scheduler.get_last_lr()[0]:.5f}",
                        flush=True,
                    )

    if rank == 0:
        out_dir = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out_dir, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(out_dir, "model.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
