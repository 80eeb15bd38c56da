"""Random-window forecaster whose DataLoader workers draw the same windows on every rank.

Training samples are random windows cut from a few long recordings: the dataset's
__getitem__ ignores the index and draws (recording, offset) with Python's `random`
module, which PyTorch seeds in each DataLoader worker from base_seed + worker_id.
base_seed is drawn from the main process's torch RNG when the loader iterator is
created, and the script calls torch.manual_seed(args.seed) on every rank (so the
replicas start identical).  DistributedSampler splits the *indices* by rank, but
the indices are not what decides the sample here, so worker k on every rank gets
the same seed and produces the same stream of windows.

With one process the two workers have different seeds and every batch is fresh
data.  With 2 hosts x 2 processes the four ranks train on identical batches, so
each global batch of 64 holds 16 distinct windows repeated 4 times: the job does 4x
the work for 1/4 of the data, silently.

Public sources:
- huggingface/transformers#37932 "Different DataLoader worker share the same seed
  and lost randomness": with DDP, the same worker on different ranks gets the same
  seed, so random augmentation is identical across ranks.
- nnaisense/bayesian-flow-networks#3 "Dataloader workers in different gpus may get
  the same randomness when multi-processes training".
- facebookresearch/detr#297 and facebookresearch/deit#150 (why seed + rank under DDP).
- PyTorch "Reproducibility" notes / DataLoader docs on base_seed and worker seeding.

Fix: make the loader's randomness rank-dependent, e.g. pass
generator=torch.Generator().manual_seed(args.seed + rank) to the DataLoader (or
seed with seed + rank, or mix the rank into a worker_init_fn).
"""

import argparse
import math
import os
import random

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

WINDOW, N_REC, REC_LEN = 32, 6, 6000


def make_recordings(seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(REC_LEN, dtype=torch.float32)
    recs = []
    for _ in range(N_REC):
        f = 0.01 + 0.05 * torch.rand(3, generator=g)
        ph = 2 * math.pi * torch.rand(3, generator=g)
        a = 0.5 + torch.rand(3, generator=g)
        s = (a[:, None] * torch.sin(f[:, None] * t + ph[:, None])).sum(0)
        recs.append(s + 0.05 * torch.randn(REC_LEN, generator=g))
    return torch.stack(recs)


class RandomWindows(Dataset):
    """windows_per_epoch random (window -> next value) pairs per epoch."""

    def __init__(self, recs, windows_per_epoch):
        self.recs = recs
        self.n = windows_per_epoch

    def __len__(self):
        return self.n

    def __getitem__(self, idx):
        r = random.randrange(self.recs.shape[0])
        start = random.randrange(self.recs.shape[1] - WINDOW - 1)
        w = self.recs[r, start : start + WINDOW + 1]
        return w[:WINDOW], w[WINDOW:]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64, help="global batch size")
    p.add_argument("--windows-per-epoch", type=int, default=4096)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    recs = make_recordings(1)
    ds = RandomWindows(recs, args.windows_per_epoch)
    sampler = DistributedSampler(ds, shuffle=True, seed=args.seed)
    loader = DataLoader(
        ds, batch_size=args.batch_size // world, sampler=sampler, num_workers=args.workers, drop_last=True
    )

    model = nn.Sequential(nn.Linear(WINDOW, 64), nn.ReLU(), nn.Linear(64, 1))
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(ddp.parameters(), lr=args.lr)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        ddp.train()
        for step, (xb, yb) in enumerate(loader):
            loss = F.mse_loss(ddp(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if rank == 0 and step % 16 == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)

    if rank == 0:
        # every 7th window of every recording, in order
        xs = recs[:, :-1].unfold(1, WINDOW, 7).reshape(-1, WINDOW)
        ys = recs[:, WINDOW:].unfold(1, 1, 7).reshape(-1, 1)
        model.eval()
        with torch.no_grad():
            test_mse = F.mse_loss(model(xs), ys).item()
        print(f"eval test_mse={test_mse:.5f}", flush=True)
        out = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(out, "model.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
