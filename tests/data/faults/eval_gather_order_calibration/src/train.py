"""Classifier trained with DDP, then temperature-calibrated on a sharded validation set.

The fault
---------
Validation is spread over all ranks with a DistributedSampler (shuffle=False), the
logits are collected with ``dist.all_gather`` and concatenated, and the result is
compared with ``val_labels`` - the label tensor in dataset order - to report accuracy
and to fit the softmax temperature that is stored in the model (``temperature`` buffer,
used at inference).  DistributedSampler does not give rank r a contiguous block: it
gives indices r, r+W, r+2W, ...  Concatenating the gathered shards therefore yields
the predictions in the order [0, 4, 8, ..., 1, 5, 9, ...] while the labels are in the
order [0, 1, 2, ...].  With one process the two orders coincide and everything is
correct; on 2x2 ranks the reported validation accuracy collapses to chance while the
network itself trained fine, and the calibration fits a huge temperature that flattens
every prediction of the saved model.  Nothing errors.

Public sources
--------------
- huggingface/transformers PR #4243 "Distributed eval: SequentialDistributedSampler +
  gather all results" and issue #3944 "Trainer: distributed eval" ("you pretty much need
  to have the inference results for exactly all the samples, in the exact same order as
  the input ... You probably could do this using torch's DistributedSampler with some
  hacks ... and knowledge of its internal implementation (how to reorder samples)").
- facebookresearch/deit PR #24 "Support parallelized evaluation" (OrderedDistributedSampler).
- RUCAIBox/RecBole PR #1872 "[BUG] Incorrect evaluation results due to multi-GPU
  distributed sampler".
- PyTorch docs, torch.utils.data.distributed.DistributedSampler (strided subsampling,
  padding to a multiple of num_replicas).

Fix
---
Gather the labels (or the dataset indices) together with the logits and compare those,
or use a sampler that hands each rank a contiguous block (and drop the padding), or
reorder the gathered rows back with the sampler's index order.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


class Classifier(nn.Module):
    def __init__(self, dim, n_classes):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, n_classes))
        self.register_buffer("temperature", torch.ones(()))  # applied by the serving code

    def forward(self, x):
        return self.net(x)


def make_data(n, dim=20, n_classes=5, seed=17):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=torch.Generator().manual_seed(99)) * 0.35
    y = torch.randint(0, n_classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, dim, generator=g)
    return x, y


def gather_cat(t, world_size):
    parts = [torch.zeros_like(t) for _ in range(world_size)]
    dist.all_gather(parts, t)
    return torch.cat(parts)


def fit_temperature(logits, labels):
    """Grid search of the softmax temperature that minimises the validation NLL."""
    grid = torch.logspace(-1, 2, 61)
    nll = torch.stack([F.cross_entropy(logits / t, labels) for t in grid])
    return grid[nll.argmin()]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    args, _ = parser.parse_known_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    world_size = dist.get_world_size()
    torch.manual_seed(0)

    x_train, y_train = make_data(2048, seed=17)
    x_val, val_labels = make_data(512, seed=18)
    train_set = TensorDataset(x_train, y_train)
    val_set = TensorDataset(x_val, val_labels)
    train_sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=0)
    val_sampler = DistributedSampler(val_set, num_replicas=world_size, rank=rank, shuffle=False)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=train_sampler)
    val_loader = DataLoader(val_set, batch_size=128, sampler=val_sampler)

    model = Classifier(x_train.shape[1], 5)
    ddp_model = DDP(model)
    optimizer = torch.optim.Adam(ddp_model.parameters(), lr=args.lr)

    for epoch in range(args.epochs):
        train_sampler.set_epoch(epoch)
        ddp_model.train()
        for step, (xb, yb) in enumerate(train_loader):
            loss = F.cross_entropy(ddp_model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if rank == 0 and step % 8 == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)

        # every rank scores its share of the validation set; gather all logits
        model.eval()
        with torch.no_grad():
            local = torch.cat([model(xb) for xb, _ in val_loader])
        val_logits = gather_cat(local, world_size)[: len(val_set)]
        val_acc = (val_logits.argmax(1) == val_labels).float().mean().item()
        val_nll = F.cross_entropy(val_logits, val_labels).item()
        if rank == 0:
            print(f"epoch={epoch} val_accuracy={val_acc:.3f} val_nll={val_nll:.4f}", flush=True)

    # post-hoc calibration on the validation logits; stored with the weights
    temperature = fit_temperature(val_logits, val_labels)
    model.temperature.fill_(temperature)
    if rank == 0:
        print(f"calibrated temperature={temperature.item():.3f}", flush=True)
        out_dir = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out_dir, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(out_dir, "model.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
