"""Rare-event (fraud-style) binary classifier with a class-imbalance weighted loss.

What goes wrong
    The positive class is rare (1 %, 8 of 800), so the loss is BCEWithLogitsLoss with
    pos_weight = (#negatives / #positives), counted by a helper that iterates the
    training DataLoader once before training.  On one process the loader covers
    the whole training set and pos_weight is the global ratio.  Under DDP the
    loader only yields the rank's DistributedSampler shard, so every rank counts
    its own handful of positives (1 to 3) and builds a DIFFERENT loss function
    (pos_weight 99 / 65.7 / 99 / 199 on ranks 0-3, against the global 99; rank 0
    happens to print the global value).  DDP then averages gradients of four
    different objectives; nothing errors, the loss curve looks plausible,
    but the trained model (and its decision threshold / recall) differs from the
    one-process model trained on exactly the same global batches.

Public sources
    - PyTorch docs, torch.nn.BCEWithLogitsLoss (pos_weight = negatives/positives)
      and torch.utils.data.distributed.DistributedSampler (loader yields only the
      rank's subset).
    - StackOverflow 64920956 "validation_epoch_end with DDP Pytorch Lightning":
      each DDP process only sees its own share of the data; statistics must be
      accumulated as state and synchronised across processes.
      https://stackoverflow.com/questions/64920956
    - "Class weights with DistributedSampler" tutorial (taourl.com/read-2547778.html)
      computing class weights next to a DistributedSampler.

Fix
    Count positives/negatives on the whole training set (or all_reduce the
    per-rank counts with SUM) before building pos_weight, so every rank uses the
    same global ratio.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

GLOBAL_BATCH = 32
N_TRAIN = 800
N_FEATURES = 12


def make_dataset():
    g = torch.Generator().manual_seed(2024)
    x = torch.randn(N_TRAIN, N_FEATURES, generator=g)
    w = torch.randn(N_FEATURES, generator=g)
    score = x @ w + 0.5 * torch.randn(N_TRAIN, generator=g)
    y = (score > torch.quantile(score, 0.99)).float()
    return TensorDataset(x, y)


def label_counts(loader):
    pos, neg = 0, 0
    for _, y in loader:
        pos += int(y.sum().item())
        neg += int((1 - y).sum().item())
    return pos, neg


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.01)
    args, _ = parser.parse_known_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    world = dist.get_world_size()

    dataset = make_dataset()
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=GLOBAL_BATCH // world, sampler=sampler)

    pos, neg = label_counts(loader)
    pos_weight = torch.tensor([neg / max(pos, 1)])
    if rank == 0:
        print(f"positives={pos} negatives={neg} pos_weight={pos_weight.item():.2f}", flush=True)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(N_FEATURES, 32), nn.Tanh(), nn.Linear(32, 1))
    ddp_model = DDP(model)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=args.lr, momentum=0.9)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for step, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            loss = loss_fn(ddp_model(x).squeeze(1), y)
            loss.backward()
            optimizer.step()
            if rank == 0 and step % 5 == 0:
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
