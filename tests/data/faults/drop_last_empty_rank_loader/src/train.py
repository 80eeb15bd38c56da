"""Fine-tuning a small classifier on a small labelled set, per-device batch size 32.

What goes wrong
    The script follows the "per-device batch size" convention (as in HF
    TrainingArguments.per_device_train_batch_size) and builds its DataLoader with
    drop_last=True so that every optimizer step sees a full batch.  The labelled
    set has 120 examples.  On one process that is 3 full batches per epoch.  Under
    torchrun with 2 hosts x 2 processes the DistributedSampler gives each rank 30
    examples, fewer than one batch of 32, and drop_last discards them: every
    rank's DataLoader is EMPTY.  The training loop runs zero iterations, no
    gradient is ever computed or all-reduced, nothing hangs or fails, and rank 0
    saves the randomly initialised weights as the fine-tuned model.  The only
    traces are missing step lines, train_loss=0.0000 and chance-level val_acc.

Public sources
    - saforem2/ezpz PR #190 "drop_last=True on HF dataloader ..." review thread:
      when floor(len(dataset)/dp_size) < batch_size each rank gets fewer than one
      full batch, the loader drops it, "the training loop then executes zero
      optimizer steps but still exits successfully".
      https://github.com/saforem2/ezpz/pull/190
    - facebookresearch/sscd-copy-detection#9 "Dataloader returned 0 length" (train
      loader length 0 with a 966-sample dataset under DDP + drop_last)
      https://github.com/facebookresearch/sscd-copy-detection/issues/9
    - RasmussenLab/vamb PR #425 "Only drop_last with enough elements in data loaders"
      https://github.com/RasmussenLab/vamb/pull/425
    - PyTorch docs: DataLoader(drop_last) and DistributedSampler (each rank gets
      len(dataset)/num_replicas samples).

Fix
    Size the per-rank batch from the global batch (32 // world_size), or use
    drop_last=False, and assert len(loader) > 0 on every rank before training.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

N_TRAIN = 120
N_VAL = 400
N_FEATURES = 20
N_CLASSES = 4


def make_split(n, seed, centers):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    x = centers[y] + 0.8 * torch.randn(n, N_FEATURES, generator=g)
    return TensorDataset(x, y)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--per-device-batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    args, _ = parser.parse_known_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    world = dist.get_world_size()

    centers = torch.randn(N_CLASSES, N_FEATURES, generator=torch.Generator().manual_seed(7))
    train_set = make_split(N_TRAIN, 1, centers)
    val_set = make_split(N_VAL, 2, centers)

    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=0)
    # full batches only: a ragged last batch gives a noisy last step
    loader = DataLoader(train_set, batch_size=args.per_device_batch_size, sampler=sampler, drop_last=True)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(N_FEATURES, 64), nn.ReLU(), nn.Linear(64, N_CLASSES))
    ddp_model = DDP(model)
    optimizer = torch.optim.Adam(ddp_model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        ddp_model.train()
        total, n = 0.0, 0
        for step, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            loss = loss_fn(ddp_model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item()
            n += 1
            if rank == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)
        if rank == 0:
            model.eval()
            with torch.no_grad():
                xv, yv = val_set.tensors
                acc = (model(xv).argmax(1) == yv).float().mean().item()
            print(f"epoch={epoch} train_loss={total / max(n, 1):.4f} val_acc={acc:.3f}", flush=True)

    if rank == 0:
        out_dir = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out_dir, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(out_dir, "model.pt"))
        print("saved model", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
