"""Tabular classifier (MLP with BatchNorm) trained with DDP on a fixed global batch.

What goes wrong
    The global batch of 32 is split across ranks (8 per rank at 4 ranks) and the
    DataLoader keeps its default drop_last=False.  The 484-sample training set
    splits into 15 full batches plus a trailing batch of 4 on one process, which
    BatchNorm1d handles fine.  With DistributedSampler at 4 ranks each rank holds
    121 samples: 15 batches of 8 and a trailing batch of ONE sample.  BatchNorm in
    training mode cannot compute a variance from one value per channel and raises
    "ValueError: Expected more than 1 value per channel when training" on every
    rank at the last step of the first epoch.  The traceback points into the model
    (BatchNorm / the DDP forward), but the cause is the data pipeline: the per-rank
    shard size modulo the per-rank batch size leaves a batch of one.

Public sources
    - fastai/fastai#1352 "Expected more than 1 value per channel when training"
      (maintainer: last batch of size 1 without drop_last breaks BatchNorm)
      https://github.com/fastai/fastai/issues/1352
    - bubbliiiing/deeplabv3-plus-pytorch#1: batch size even on one GPU still fails
      on 4 GPUs ("the per-card batch must be even")
      https://github.com/bubbliiiing/deeplabv3-plus-pytorch/issues/1
    - azavea/raster-vision PR #1029 "Set drop_last = True in train dataloader"
      https://github.com/azavea/raster-vision/pull/1029
    - PyTorch docs, torch.utils.data.distributed.DistributedSampler (each rank
      gets ceil(N / num_replicas) samples).

Fix
    Build the training DataLoader with drop_last=True (or choose the per-rank
    batch so that no rank is left with a single-sample batch).
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

GLOBAL_BATCH = 32
N_TRAIN = 484
N_FEATURES = 16


def make_dataset():
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(N_TRAIN, N_FEATURES, generator=g)
    w = torch.randn(N_FEATURES, generator=g)
    y = ((x @ w) + 0.3 * torch.randn(N_TRAIN, generator=g) > 0).long()
    return TensorDataset(x, y)


def build_model():
    return nn.Sequential(
        nn.Linear(N_FEATURES, 64),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Linear(64, 64),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Linear(64, 2),
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)
    args, _ = parser.parse_known_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    world = dist.get_world_size()

    torch.manual_seed(0)
    dataset = make_dataset()
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=0)
    # keep the global batch at 32 whatever the number of processes
    loader = DataLoader(dataset, batch_size=GLOBAL_BATCH // world, sampler=sampler)

    model = build_model()
    ddp_model = DDP(model)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        ddp_model.train()
        for step, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            loss = loss_fn(ddp_model(x), y)
            loss.backward()
            optimizer.step()
            if rank == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)

    if rank == 0:
        out_dir = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out_dir, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(out_dir, "model.pt"))
        print("saved model", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
