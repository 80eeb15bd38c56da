"""Defect detector (binary, ~10 % positives) with F1-based early stopping.

What goes wrong
    Every few steps the model is validated and training stops as soon as the
    validation F1 reaches the target (0.8).  Validation is sharded with a
    DistributedSampler; each rank computes F1 on its own shard and the script
    averages the per-rank F1 values with all_reduce(SUM) / world_size, the same
    recipe used for the validation loss.  F1 is not a mean over samples: the mean
    of per-shard F1 scores is not the F1 of the whole set.  Here one rank's
    20-sample validation shard holds no positive at all, so its F1 is 0 whatever
    the model does, and the averaged "val_f1" can never exceed 0.75.  On one
    process the real F1 crosses 0.8 early and training stops; at 2 hosts x 2
    processes the stop never fires, the job runs all epochs and saves a different
    (longer-trained) model, with a pessimistic val_f1 in the logs.  No error.

Public sources
    - StackOverflow 64920956 "validation_epoch_end with DDP Pytorch Lightning":
      averaging per-process metric values vs. synchronising metric state
      (counts) and computing the metric from the reduced state (TorchMetrics).
      https://stackoverflow.com/questions/64920956
    - HF forum summary "compute_metrics ... all-gathers": Trainer gathers all
      predictions/labels before computing metrics rather than averaging per-rank
      metrics (hf.co datasets John6666/forum1 compute_metrics_trainer_all_gathers.md).
    - PyTorch docs, torch.distributed.all_reduce / DistributedSampler.

Fix
    all_reduce the confusion counts (tp, fp, fn) with SUM and compute F1 from the
    global counts (or all_gather predictions and labels), then decide early
    stopping from that value.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

GLOBAL_BATCH = 32
N_TRAIN = 1600
N_VAL = 80
N_FEATURES = 10
EVAL_EVERY = 10
TARGET_F1 = 0.8


def make_split(n, seed, w):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=g)
    score = x @ w + 0.05 * torch.randn(n, generator=g)
    return TensorDataset(x, (score > 1.3 * w.norm()).float())


def f1_score(pred, target):
    tp = (pred * target).sum().item()
    fp = (pred * (1 - target)).sum().item()
    fn = ((1 - pred) * target).sum().item()
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom > 0 else 0.0


def evaluate(model, loader, world):
    model.eval()
    preds, targets = [], []
    with torch.no_grad():
        for x, y in loader:
            preds.append((model(x).squeeze(1) > 0).float())
            targets.append(y)
    model.train()
    f1 = torch.tensor(f1_score(torch.cat(preds), torch.cat(targets)))
    dist.all_reduce(f1)
    return f1.item() / world


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.03)
    args, _ = parser.parse_known_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    world = dist.get_world_size()

    w = torch.randn(N_FEATURES, generator=torch.Generator().manual_seed(5))
    train_set = make_split(N_TRAIN, 11, w)
    val_set = make_split(N_VAL, 27, w)

    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(train_set, batch_size=GLOBAL_BATCH // world, sampler=sampler)
    val_sampler = DistributedSampler(val_set, num_replicas=world, rank=rank, shuffle=False)
    val_loader = DataLoader(val_set, batch_size=64, sampler=val_sampler)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(N_FEATURES, 32), nn.ReLU(), nn.Linear(32, 1))
    ddp_model = DDP(model)
    optimizer = torch.optim.Adam(ddp_model.parameters(), lr=args.lr)
    loss_fn = nn.BCEWithLogitsLoss()

    global_step = 0
    stop = False
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for step, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            loss = loss_fn(ddp_model(x).squeeze(1), y)
            loss.backward()
            optimizer.step()
            global_step += 1
            if global_step % EVAL_EVERY == 0:
                val_f1 = evaluate(model, val_loader, world)
                if rank == 0:
                    print(f"epoch={epoch} step={step} loss={loss.item():.4f} val_f1={val_f1:.3f}", flush=True)
                if val_f1 >= TARGET_F1:
                    stop = True
                    break
        if stop:
            if rank == 0:
                print(f"early stop at global_step={global_step}", flush=True)
            break

    if rank == 0:
        out_dir = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out_dir, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(out_dir, "model.pt"))
        print("saved model", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
