"""Tabular regression on spot capacity: DDP training with checkpoint / resume.

What the job is
---------------
A small MLP regressor trained with DistributedDataParallel (gloo, CPU) on a
synthetic tabular data set. The job runs on interruptible (spot) instances, so
it checkpoints at the end of every epoch and resumes from the last checkpoint
when it is restarted. To exercise the resume path on every run, the script
trains the first half of the epochs, tears the model down as an interruption
would, then "restarts": it builds a fresh model, resumes from the checkpoint
and trains the remaining epochs. Rank 0 writes the final model to
``$SM_MODEL_DIR/model.pt``.

The checkpoint directory is host-local (``$SM_OUTPUT_DATA_DIR/checkpoints``)
and only rank 0 writes it, so only rank 0's host has the file. The team
therefore made rank 0 the only reader on resume and relied on the documented
DDP behaviour that the wrapper broadcasts rank 0's parameters to every rank at
construction ("load the checkpoint into the local model, then wrap it with
DDP").

What goes wrong
---------------
The resume block is guarded by ``if rank == 0 and os.path.exists(...)``.
Inside it the weights are loaded (and then correctly broadcast by the DDP
constructor) but the training-progress counter ``start_epoch`` is also only
set there and is never broadcast. Rank 0 resumes at epoch 1; ranks 1..3 keep
``start_epoch = 0`` and replay epoch 0 before epoch 1. The ranks now run a
different number of optimizer steps, so their all-reduces stop pairing up:
rank 0 finishes its loop, reaches the checkpoint barrier / exits while the
others still wait in a gradient all-reduce -> the job hangs or dies with a
gloo "connection closed by peer" error. In one process there is nobody to
disagree with and the job resumes correctly.

Public sources
--------------
* mlcommons/algorithmic-efficiency issue #412 "Resuming from checkpoint fails
  when using TORCH_DDP": the log dir is only known on rank 0, "so rank 0 loads
  the checkpoint and the remaining processes don't, which causes the processes
  to have inconsistent states and hang during an all_wait".
* KempnerInstitute/KempnerForge issue #49 / PR #50 "Race in CheckpointManager
  save and load collectives": ranks deciding independently whether to resume
  enter different collective sequences and deadlock; fix is a
  rank-0-authoritative decision that is broadcast.
* https://discuss.pytorch.org/t/checkpointing-ddp-module-instead-of-ddp-itself/115714
  (load the checkpoint into the local model, then wrap with DDP) - the advice
  the team half-applied: DDP's wrap-time broadcast covers parameters and
  buffers only, not plain Python training state such as the epoch counter.

Fix
---
Make every rank agree on the resume state: after rank 0 reads the checkpoint,
broadcast the scalar progress (``dist.broadcast_object_list([start_epoch],
src=0)``) - or let every rank read a checkpoint that all hosts can see - before
entering the training loop.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

N_SAMPLES = 512
N_FEATURES = 10
GLOBAL_BATCH = 32
LR = 0.05


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    return p.parse_args()


def make_dataset():
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(N_SAMPLES, N_FEATURES, generator=g)
    w = torch.randn(N_FEATURES, 1, generator=g)
    y = torch.sin(x @ w) + 0.5 * x[:, :1] ** 2 + 0.05 * torch.randn(N_SAMPLES, 1, generator=g)
    return TensorDataset(x, y)


def build_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(N_FEATURES, 32), nn.Tanh(), nn.Linear(32, 1))


def global_mean(value, world_size):
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / world_size


def train_epochs(ddp_model, optimizer, loader, sampler, first_epoch, end_epoch, ckpt_path, rank, world_size):
    loss_fn = nn.MSELoss()
    for epoch in range(first_epoch, end_epoch):
        sampler.set_epoch(epoch)
        for step, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            loss = loss_fn(ddp_model(x), y)
            loss.backward()
            optimizer.step()
            avg = global_mean(loss.item(), world_size)
            if rank == 0:
                print(f"epoch={epoch} step={step} loss={avg:.4f}", flush=True)
        # end-of-epoch checkpoint, written by rank 0 to its host-local disk
        if rank == 0:
            torch.save({"model": ddp_model.module.state_dict(), "epoch": epoch}, ckpt_path)
            print(f"checkpoint saved epoch={epoch}", flush=True)
        dist.barrier()


def main():
    args = parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    world_size = dist.get_world_size()
    assert GLOBAL_BATCH % world_size == 0

    out_dir = os.environ.get("SM_OUTPUT_DATA_DIR", "/tmp/out")
    model_dir = os.environ.get("SM_MODEL_DIR", "/tmp/model_out")
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    ckpt_path = os.path.join(ckpt_dir, "last.pt")
    if rank == 0:
        os.makedirs(ckpt_dir, exist_ok=True)
        os.makedirs(model_dir, exist_ok=True)

    dataset = make_dataset()
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=GLOBAL_BATCH // world_size, sampler=sampler)

    first_leg = max(1, args.epochs // 2)

    # ---- attempt 1: trains the first half, then the spot instance is reclaimed ----
    model = build_model()
    ddp_model = DDP(model)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=LR)
    train_epochs(ddp_model, optimizer, loader, sampler, 0, min(first_leg, args.epochs), ckpt_path, rank, world_size)
    if rank == 0:
        print(f"simulated spot interruption after epoch={first_leg - 1}", flush=True)
    del ddp_model, model, optimizer

    # ---- attempt 2: restart, resume from the last checkpoint ----
    model = build_model()
    start_epoch = 0
    if rank == 0 and os.path.exists(ckpt_path):  # only rank 0's host has the file
        ckpt = torch.load(ckpt_path, map_location="cpu")
        model.load_state_dict(ckpt["model"])
        start_epoch = ckpt["epoch"] + 1
        print(f"resuming from checkpoint at epoch={start_epoch}", flush=True)
    ddp_model = DDP(model)  # broadcasts rank 0's (restored) weights to every rank
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=LR)
    train_epochs(ddp_model, optimizer, loader, sampler, start_epoch, args.epochs, ckpt_path, rank, world_size)

    if rank == 0:
        final = ddp_model.module
        with torch.no_grad():
            x, y = dataset.tensors
            final_loss = nn.functional.mse_loss(final(x), y).item()
            checksum = sum(p.double().sum().item() for p in final.parameters())
        print(f"final_loss={final_loss:.6f} weight_checksum={checksum:.6f}", flush=True)
        torch.save(final.state_dict(), os.path.join(model_dir, "model.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
