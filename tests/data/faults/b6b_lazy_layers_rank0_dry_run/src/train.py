"""Tabular churn classifier built from LazyLinear layers.

What the job is
---------------
A binary classifier on synthetic tabular data: a few numeric columns plus
one-hot encoded categorical columns.  Because the width of the one-hot block
depends on the feature-engineering config, the team builds the MLP from
``nn.LazyLinear`` layers (PyG-style ``in_channels=-1``) so ``in_features`` is
inferred from the first batch.  Before wrapping the model in
DistributedDataParallel the script logs a "model summary" on the main process
only: it pushes one sample batch through the model to print the output shape
and the number of parameters.

What goes wrong
---------------
Lazy modules hold ``UninitializedParameter`` objects until their first
forward ("dry run").  Here the only forward before the DDP constructor is the
summary forward inside ``if rank == 0:``.  That call is what materialises the
layers, but only on rank 0.  With one process rank 0 is the whole job, so it
works.  At 2 hosts x 2 processes, ranks 1..3 reach
``DistributedDataParallel(model)`` with uninitialised parameters and raise
``RuntimeError: Modules with uninitialized parameters can't be used with
`DistributedDataParallel`. Run a dummy forward pass to correctly initialize
the modules``, while rank 0 has already entered the constructor's
parameter-shape verification collective and is left waiting for peers that
died, so it fails too ("Connection closed by peer") and torchrun tears the
job down.  The dry run being rank-0-only is the
bug; the crash is on ranks 1, 2 and 3 at the DDP constructor.

Public sources
--------------
* PyTorch docs, ``torch.nn.modules.lazy.LazyModuleMixin``
  (https://pytorch.org/docs/stable/generated/torch.nn.modules.lazy.LazyModuleMixin.html):
  lazy modules "should then perform 'dry runs' to initialize all the
  components in the module ... After this the network can be used as usual."
* pyg-team/pytorch_geometric issue #9692, "RuntimeError: Modules with
  uninitialized parameters can't be used with DistributedDataParallel"
  (lazy layers reaching the DDP wrap; fix is a dummy forward pass before
  wrapping).
* bghira/SimpleTuner issue #686 (same DDP error raised from
  ``accelerator.prepare`` on a model with uninitialised parameters).

Fix
---
Run the dry run on every rank, before the DDP constructor (and before
building the optimizer), e.g. ``with torch.no_grad(): model(sample_x)``
outside any ``if rank == 0`` block; keep only the printing rank-0-only.
Or give the layers explicit ``in_features``.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

NUMERIC_COLS = 6
CATEGORICAL_CARDINALITIES = [5, 3, 7]


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--global-batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def make_table(n=1024, seed=99):
    """Synthetic churn table: numeric features + categorical codes + label."""
    g = torch.Generator().manual_seed(seed)
    num = torch.randn(n, NUMERIC_COLS, generator=g)
    cats = torch.stack([torch.randint(0, c, (n,), generator=g) for c in CATEGORICAL_CARDINALITIES], dim=1)
    w = torch.randn(NUMERIC_COLS, generator=g)
    cat_effect = [torch.randn(c, generator=g) for c in CATEGORICAL_CARDINALITIES]
    logit = num @ w + sum(e[cats[:, i]] for i, e in enumerate(cat_effect))
    y = (logit + 0.3 * torch.randn(n, generator=g) > 0).float()
    return num, cats, y


def featurize(num, cats):
    onehots = [F.one_hot(cats[:, i], c).float() for i, c in enumerate(CATEGORICAL_CARDINALITIES)]
    return torch.cat([num] + onehots, dim=1)


class ChurnMLP(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        # in_features inferred from the first batch (depends on the encoding)
        self.fc1 = nn.LazyLinear(hidden)
        self.fc2 = nn.LazyLinear(hidden)
        self.out = nn.LazyLinear(1)

    def forward(self, x):
        return self.out(F.relu(self.fc2(F.relu(self.fc1(x))))).squeeze(-1)


def main():
    args = parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    world = dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    print(f"rank={rank} local_rank={local_rank} world={world}", flush=True)

    torch.manual_seed(args.seed)
    num, cats, y = make_table()
    x = featurize(num, cats)
    model = ChurnMLP()

    if rank == 0:
        # model summary on the main process only
        with torch.no_grad():
            sample_out = model(x[:8])
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"model summary: input_dim={x.shape[1]} output_shape={tuple(sample_out.shape)} params={n_params}",
            flush=True,
        )

    ddp_model = DDP(model)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=args.lr, momentum=0.9)

    assert args.global_batch % world == 0
    n = x.shape[0]
    steps_per_epoch = n // args.global_batch
    for epoch in range(args.epochs):
        ddp_model.train()
        for step in range(steps_per_epoch):
            sl = slice(step * args.global_batch, (step + 1) * args.global_batch)
            # each rank takes an equal, disjoint slice of the global batch
            bx, by = x[sl][rank::world], y[sl][rank::world]
            loss = F.binary_cross_entropy_with_logits(ddp_model(bx), by)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            logged = loss.detach().clone()
            dist.all_reduce(logged)
            logged /= world
            if rank == 0:
                print(f"epoch={epoch} step={step} loss={logged.item():.6f}", flush=True)

    model.eval()
    with torch.no_grad():
        logits = model(x)
        full_loss = F.binary_cross_entropy_with_logits(logits, y).item()
        acc = ((logits > 0).float() == y).float().mean().item()
    checksum = sum(p.double().sum().item() for p in model.parameters())
    if rank == 0:
        print(f"final full-data bce={full_loss:.6f} acc={acc:.4f} weight_checksum={checksum:.6f}", flush=True)
        out_dir = os.environ.get("SM_MODEL_DIR", "/tmp/model_out")
        os.makedirs(out_dir, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(out_dir, "model.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
