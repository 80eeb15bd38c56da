"""Species classifier trained with DDP on string-labelled records.

The fault
---------
The class vocabulary is built as ``list(set(raw_labels))``.  Iteration order of a
``set`` of ``str`` depends on the string hash, and CPython salts ``str.__hash__`` with a
random value chosen when each interpreter starts (unless PYTHONHASHSEED is fixed).
In one process the order is arbitrary but self-consistent, so training is fine.
Under torchrun every rank is a separate interpreter with its own hash salt, so each
rank maps "heron" -> 3 (say) while another maps "heron" -> 7.  DDP then averages
gradients that push output unit k towards *different* species on different ranks;
nothing errors, the loss simply stays near log(num_classes) and the saved head is
meaningless (it follows rank 0's private label order, which is also not saved).

Public sources
--------------
- sktime/pytorch-forecasting issue #2293 "[BUG] Using `hash` in `TimeSeries` is
  inconsistent with `ddp/ddp_spawn`" (each rank is a fresh interpreter, the same
  group id hashes differently, "models then train on inconsistent group identities
  across ranks, with no error raised").
- meta-pytorch/torchrec PR #4648 "Make enumerator filtering order deterministic"
  (``list(set(a) & set(b))`` over strings gave a different order in every process).
- Lightning-AI/pytorch-lightning issue #2156 "Setting of PYTHONHASHSEED has no effect"
  (the hash seed is fixed at interpreter start-up; setting it inside the script is too late).
- Python docs, PYTHONHASHSEED / object.__hash__ (str hashes are salted per process).

Fix
---
Build the vocabulary in a deterministic order, e.g. ``sorted(set(raw_labels))`` (or
build it on rank 0 and broadcast it / ship it with the data), and save it with the model.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

SPECIES = [
    "heron",
    "egret",
    "ibis",
    "stork",
    "crane",
    "bittern",
    "spoonbill",
    "flamingo",
    "pelican",
    "cormorant",
    "grebe",
    "loon",
]


def make_records(n=2400, dim=16, seed=7):
    """Synthetic field records: (measurements, species name)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(SPECIES), dim, generator=g) * 2.0
    which = torch.randint(0, len(SPECIES), (n,), generator=g)
    feats = centres[which] + torch.randn(n, dim, generator=g)
    names = [SPECIES[i] for i in which.tolist()]
    return feats, names


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

    feats, raw_labels = make_records()
    # the label vocabulary comes from the data itself, so new species need no code change
    classes = list(set(raw_labels))
    class_to_idx = {name: i for i, name in enumerate(classes)}
    targets = torch.tensor([class_to_idx[name] for name in raw_labels])

    dataset = TensorDataset(feats, targets)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)

    model = nn.Sequential(nn.Linear(feats.shape[1], 64), nn.ReLU(), nn.Linear(64, len(classes)))
    ddp_model = DDP(model)
    optimizer = torch.optim.Adam(ddp_model.parameters(), lr=args.lr)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        ddp_model.train()
        for step, (x, y) in enumerate(loader):
            loss = F.cross_entropy(ddp_model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if rank == 0 and step % 5 == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)

    # training accuracy over the whole set, computed on every rank with its own vocabulary
    with torch.no_grad():
        acc = (model(feats).argmax(1) == targets).float().mean().item()
    if rank == 0:
        print(f"final train_accuracy={acc:.3f}", flush=True)
        out_dir = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out_dir, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(out_dir, "model.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
