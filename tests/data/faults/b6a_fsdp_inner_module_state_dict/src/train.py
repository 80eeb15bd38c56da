"""Multiclass classifier moved from DDP to FSDP, with checkpoint / resume.

What the job is
---------------
A small MLP classifier (synthetic 4-class data) that used to be trained with
DistributedDataParallel and was moved to FullyShardedDataParallel (FSDP,
gloo, CPU) to make room for a bigger model. It checkpoints at the end of every
epoch and resumes from the last checkpoint when the (spot) job is restarted.
To exercise the resume path on every run, the script trains the first half of
the epochs, tears the model down as an interruption would, then builds a fresh
model, resumes from the checkpoint and trains the remaining epochs. Rank 0
writes the final model to ``$SM_MODEL_DIR/model.pt``.

The resume is written for a checkpoint that only rank 0's host has: rank 0
reads the file and broadcasts it (``broadcast_object_list``) so that every
rank loads the same full state dict into the un-wrapped model before wrapping
it with FSDP; the epoch counter travels in the same object.

What goes wrong
---------------
The save path was kept from the DDP version of the script:
``unwrap(model).state_dict()`` with ``unwrap = lambda m: m.module`` - the
standard DDP advice ("save ddp_model.module"). Under FSDP, ``model.module`` is
the wrapped inner module whose parameters are views into *this rank's shard*
of the flattened parameter. Calling ``state_dict()`` on it bypasses FSDP's
state-dict hooks (no all-gather, no unflattening), so rank 0 writes 1-D
fragments: some tensors hold rank 0's slice of a weight, tensors that live in
other ranks' shards come out with ``torch.Size([0])``. With one process FSDP
falls back to NO_SHARD, the views are the full tensors and everything works,
so the bug only shows up on the real cluster. There the resume dies in
``load_state_dict`` on every rank ("size mismatch ... copying a param with
shape torch.Size([0]) / torch.Size([..]) from checkpoint"); the model.pt
export goes through the same helper and would be a fragment too.

Public sources
--------------
* pytorch/pytorch issue #126310 "FSDP `use_orig_params` + full sharding
  results in missing parameters in gathered state dict" - the inner module's
  state dict under FULL_SHARD is missing/partial while the FSDP wrapper's
  state dict is complete.
* pytorch/pytorch issue #136950 "Incomplete Parameter Gathering on Rank 0 with
  FSDP Model Saving" - state dicts taken from sub-modules of the FSDP model on
  rank 0 are not fully gathered, so the saved checkpoint is incomplete.
* Lightning-AI/pytorch-lightning issue #17702 "Cannot save and load
  checkpoints with FSDPStrategy" (parameters not mapped correctly in the state
  dict saved by rank 0); FlagOpen/FlagEmbedding issue #873 (sharded-training
  checkpoint reloads with "copying a param with shape torch.Size([0])").
* https://discuss.pytorch.org/t/checkpointing-ddp-module-instead-of-ddp-itself/115714
  - the DDP-era "save ddp_model.module" pattern that was carried over.

Fix
---
Take the state dict through FSDP on *all* ranks, e.g.
``with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT,
FullStateDictConfig(rank0_only=True)): sd = model.state_dict()`` (or
``torch.distributed.checkpoint.state_dict.get_model_state_dict(model,
options=StateDictOptions(full_state_dict=True))``) and let rank 0 save it.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

N_SAMPLES = 512
N_FEATURES = 12
N_CLASSES = 4
GLOBAL_BATCH = 32
LR = 0.1


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    return p.parse_args()


def make_dataset():
    g = torch.Generator().manual_seed(2024)
    centers = 1.5 * torch.randn(N_CLASSES, N_FEATURES, generator=g)
    labels = torch.randint(0, N_CLASSES, (N_SAMPLES,), generator=g)
    x = centers[labels] + torch.randn(N_SAMPLES, N_FEATURES, generator=g)
    return TensorDataset(x, labels)


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(N_FEATURES, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, N_CLASSES)

    def forward(self, x):
        return self.head(self.body(x))


def build_model():
    torch.manual_seed(0)
    return Classifier()


def wrap(model):
    return FSDP(model, device_id=torch.device("cpu"), use_orig_params=True)


def unwrap(model):
    # kept from the DDP version of this script: "save model.module, not the wrapper"
    return model.module if hasattr(model, "module") else model


def save_checkpoint(model, epoch, path, rank):
    if rank == 0:
        torch.save({"model": unwrap(model).state_dict(), "epoch": epoch}, path)
        print(f"checkpoint saved epoch={epoch}", flush=True)
    dist.barrier()


def global_mean(value, world_size):
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / world_size


def train_epochs(model, optimizer, loader, sampler, first_epoch, end_epoch, ckpt_path, rank, world_size):
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(first_epoch, end_epoch):
        sampler.set_epoch(epoch)
        for step, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            avg = global_mean(loss.item(), world_size)
            if rank == 0:
                print(f"epoch={epoch} step={step} loss={avg:.4f}", flush=True)
        save_checkpoint(model, epoch, ckpt_path, rank)


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

    first_leg = min(max(1, args.epochs // 2), args.epochs)

    # ---- attempt 1: trains the first half, then the spot instance is reclaimed ----
    model = wrap(build_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.0)
    train_epochs(model, optimizer, loader, sampler, 0, first_leg, ckpt_path, rank, world_size)
    if rank == 0:
        print(f"simulated spot interruption after epoch={first_leg - 1}", flush=True)
    del model, optimizer

    # ---- attempt 2: restart; rank 0 reads the checkpoint and ships it to every rank ----
    holder = [None]
    if rank == 0 and os.path.exists(ckpt_path):
        holder[0] = torch.load(ckpt_path, map_location="cpu")
    dist.broadcast_object_list(holder, src=0)
    ckpt = holder[0]
    base = build_model()
    start_epoch = 0
    if ckpt is not None:
        base.load_state_dict(ckpt["model"])
        start_epoch = ckpt["epoch"] + 1
        if rank == 0:
            print(f"resuming from checkpoint at epoch={start_epoch}", flush=True)
    model = wrap(base)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.0)
    train_epochs(model, optimizer, loader, sampler, start_epoch, args.epochs, ckpt_path, rank, world_size)

    state = unwrap(model).state_dict()
    if rank == 0:
        final = build_model()
        final.load_state_dict(state)
        with torch.no_grad():
            x, y = dataset.tensors
            logits = final(x)
            final_loss = nn.functional.cross_entropy(logits, y).item()
            acc = (logits.argmax(1) == y).float().mean().item()
            checksum = sum(p.double().sum().item() for p in final.parameters())
        print(f"final_loss={final_loss:.6f} accuracy={acc:.4f} weight_checksum={checksum:.6f}", flush=True)
        torch.save(final.state_dict(), os.path.join(model_dir, "model.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
