"""Resumable AdamW training of a small MLP regressor (checkpoints/last.pt).

What goes wrong
---------------
When a checkpoint is present the job resumes from it, and only rank 0 reads it:
rank 0 loads the model weights *and the AdamW state* (exp_avg, exp_avg_sq,
step) before the model is wrapped, on the reasoning that DistributedDataParallel
broadcasts rank 0's parameters to every replica at construction.  That is true
for parameters and buffers, but DDP never touches the optimizer: ranks 1..N-1
resume with an empty AdamW state (step 0, zero moments, full bias correction)
while rank 0 continues with the saved moments.  The gradients are still
all-reduced, yet each rank turns the same averaged gradient into a different
update, so from the first resumed step the replicas drift apart and never
re-synchronise; rank 0 saves just one of four different models.  Nothing fails
and the loss printed by rank 0 looks normal.  At world size 1 there is only
rank 0, which loads everything, so the bug cannot show.

Public sources
--------------
* vllm-project/speculators PR #926, "fix a ddp ckpt bug": "When using ddp,
  ckpt is not resumed correctly. Only rank0 loads ckpt ..."
  https://github.com/vllm-project/speculators/pull/926
* Hzfinfdu/Diffusion-BERT issue #30, "Resuming training via --load_step":
  the checkpoint must be loaded on all devices and the optimizer/scheduler
  states restored as well.
  https://github.com/Hzfinfdu/Diffusion-BERT/issues/30
* neuraloperator/neuraloperator PR #324, "Make save_checkpoint and
  load_checkpoint compatible with single-machine DDP": rank 0 saves, *all*
  ranks load the training state (with map_location).
  https://github.com/neuraloperator/neuraloperator/pull/324
* discuss.pytorch.org, "Checkpointing DDP.module instead of DDP itself"
  (load into the local model on all processes, then wrap).
  https://discuss.pytorch.org/t/checkpointing-ddp-module-instead-of-ddp-itself/115714/2
* PyTorch DDP docs: DDP broadcasts parameters and buffers from rank 0 at
  construction; optimizer state is outside DDP and stays per-process.
  https://pytorch.org/docs/stable/notes/ddp.html

Fix
---
Load the checkpoint on every rank (``torch.load(path, map_location="cpu")``
then ``model.load_state_dict`` and ``opt.load_state_dict`` on all ranks), or
broadcast the optimizer state from rank 0 (``dist.broadcast_object_list``).
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

HERE = os.path.dirname(os.path.abspath(__file__))


def make_data(n=4096, d=24, seed=4321):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w1 = torch.randn(d, 16, generator=g) / d**0.5
    y = torch.tanh(x @ w1).sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def build_model():
    return nn.Sequential(nn.Linear(24, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--resume-from", default="checkpoints/last.pt")
    args, _ = p.parse_known_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)

    train_set = make_data()
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, drop_last=True)

    model = build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)

    resume_path = os.path.join(HERE, args.resume_from)
    meta = [0]
    if rank == 0 and os.path.exists(resume_path):
        # One reader is enough: DDP broadcasts rank 0's weights to the other
        # replicas when it wraps the model below.
        ckpt = torch.load(resume_path, map_location="cpu")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        meta[0] = ckpt["epoch"] + 1
        print(f"resumed from {resume_path} at epoch {meta[0]}", flush=True)
    dist.broadcast_object_list(meta, src=0)
    start_epoch = meta[0]

    ddp = DDP(model)
    loss_fn = nn.MSELoss()

    step = 0
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        ddp.train()
        for x, y in loader:
            loss = loss_fn(ddp(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if rank == 0 and step % 8 == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)
            step += 1

    if rank == 0:
        out = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(out, "model.pt"))
        torch.save(
            {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": args.epochs - 1},
            os.path.join(out, "last.pt"),
        )
        print(f"saved model to {out}/model.pt", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
