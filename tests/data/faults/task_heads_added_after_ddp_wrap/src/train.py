"""Multi-task tabular model: shared trunk + one output head per task, where the
heads are attached once the tasks' label spaces are known.

What goes wrong
---------------
``build_model`` creates the trunk and wraps it in DistributedDataParallel right
away; the task heads are attached afterwards through ``model.module``, once
the data has been read and each task's number of outputs is known.  DDP decides
which parameters it synchronises (and registers its gradient-reduction hooks
and buckets) when it is constructed, so the heads added later are invisible to
it: their gradients are never all-reduced.  The trunk stays in sync, but each
rank trains its own copy of every head on its own quarter of the data, the
head replicas drift apart step by step, and rank 0 saves a model whose heads
have seen only rank 0's shard.  There is no error (every registered parameter
still receives a gradient, so DDP's unused-parameter check never fires) and
rank 0's loss looks fine.  With one process there is nothing to synchronise,
so the bug is invisible.

Public sources
--------------
* PyTorch DistributedDataParallel documentation, warning: "You should never try
  to change your model's parameters after wrapping up your model with
  DistributedDataParallel. Because, when wrapping up your model with
  DistributedDataParallel, the constructor of DistributedDataParallel will
  register the additional gradient reduction functions on all the parameters
  of the model itself at the time of construction. If you change the model's
  parameters afterwards, gradient reduction functions no longer match the
  correct set of parameters."
  https://pytorch.org/docs/stable/generated/torch.nn.parallel.DistributedDataParallel.html
* CSDN blog note on ``model.module`` under DDP: changing the parameters of
  ``ddp_model.module`` in one process changes only that process (the other
  processes do not change, because nothing synchronises them).
  https://blog.csdn.net/m0_46294481/article/details/132873672
* pytorch/pytorch issue #22049, "Cannot update part of the parameters in
  DistributedDataParallel" (parameter set changed after wrapping).
  https://github.com/pytorch/pytorch/issues/22049

Fix
---
Attach every head (finish building the module) before constructing DDP:
read the task dimensions first, build the full model, then ``DDP(model)``.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


def load_data(n=4096, d=20, seed=99):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w_cat = torch.randn(d, 6, generator=g)
    w_score = torch.randn(d, 1, generator=g) / d**0.5
    category = (x @ w_cat + 0.3 * torch.randn(n, 6, generator=g)).argmax(1)
    score = torch.sin(x @ w_score) + 0.05 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, category, score)


class MultiTaskNet(nn.Module):
    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.hidden = hidden
        self.trunk = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.heads = nn.ModuleDict()

    def add_head(self, name, n_out):
        self.heads[name] = nn.Linear(self.hidden, n_out)

    def forward(self, x):
        h = self.trunk(x)
        return {name: head(h) for name, head in self.heads.items()}


def build_model(d_in):
    model = MultiTaskNet(d_in)
    return DDP(model)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    args, _ = p.parse_known_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)

    model = build_model(d_in=20)

    data = load_data()
    _, category, score = data.tensors
    # label spaces are only known once the data is loaded
    model.module.add_head("category", int(category.max()) + 1)
    model.module.add_head("score", score.shape[1])

    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    step = 0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        for x, c, s in loader:
            out = model(x)
            loss = F.cross_entropy(out["category"], c) + F.mse_loss(out["score"], s)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if rank == 0 and step % 8 == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)
            step += 1

    if rank == 0:
        out_dir = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out_dir, exist_ok=True)
        torch.save(model.module.state_dict(), os.path.join(out_dir, "model.pt"))
        print(f"saved model to {out_dir}/model.pt", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
