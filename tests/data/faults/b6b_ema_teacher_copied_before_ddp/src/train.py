"""Mean-teacher semi-supervised classifier with an EMA teacher.

What the job is
---------------
A small MLP classifier is trained "mean teacher" style (Tarvainen & Valpola):
a supervised cross-entropy on the labelled part of each batch plus a
consistency loss that pulls the student's predictions on a perturbed view of
the inputs towards the predictions of an exponential-moving-average (EMA)
copy of the student (the teacher).  After each optimizer step the teacher is
updated as ``teacher = d * teacher + (1 - d) * student``.

Following a common recipe, the script seeds every process with
``seed + rank`` ("so each worker gets different randomness", nanoGPT / DETR
style), relying on the DDP constructor to broadcast rank 0's weights so that
all student replicas start identical.  The EMA teacher is created with
``copy.deepcopy(model)`` right after the model is built and *before* the DDP
wrapper (the ordering timm's train.py prescribes: "create EMA model ... but
before DDP wrapper").

What goes wrong
---------------
The DDP constructor only broadcasts the state of the module it wraps.  The
teacher is a separate module that was deep-copied before that broadcast, so
on every rank other than 0 the teacher still holds that rank's own random
initialisation (different because of ``seed + rank``).  The EMA update never
synchronises it either -- it only mixes in the (synchronised) student weights
with weight ``1 - d`` per step, so ranks 1..3 carry a wrong teacher for
hundreds of steps.  Their consistency targets are garbage, their gradients
are averaged into everyone's update by DDP, and the trained model (and the
loss curve) differs from the single-process run.  Rank 0's teacher happens to
be right, so nothing looks broken on the logging rank, and no error is
raised.  In a single process there is only rank 0, so the bug is invisible.

Public sources
--------------
* PyTorch "Distributed Data Parallel" design note
  (https://pytorch.org/docs/stable/notes/ddp.html): "The DDP constructor
  takes a reference to the local module, and broadcasts state_dict() from the
  process with rank 0" -- only the wrapped module.
* karpathy/nanoGPT issue #22 ("each worker gets a different seed") and
  antoyang/TubeDETR issue #15 (DETR-derived code: ``seed +
  rank`` set before the model is built; considered harmless because DDP
  broadcasts the weights).
* huggingface/pytorch-image-models train.py: "Important to create EMA model
  after cuda(), DP wrapper, and AMP but before DDP wrapper" (EMA copy made
  before the DDP broadcast); lucidrains/ema-pytorch issue #9 ("Using EMA in a
  DDP setup": EMA kept per rank).

Fix
---
Make the EMA copy from already-synchronised weights: seed identically on all
ranks before building the model, or create the teacher *after* the DDP
constructor (``copy.deepcopy(ddp_model.module)``), or explicitly broadcast
the teacher's parameters and buffers from rank 0 once after creating it.
"""

import argparse
import copy
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--global-batch", type=int, default=64)
    p.add_argument("--ema-decay", type=float, default=0.98)
    p.add_argument("--consistency-weight", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


class MLP(nn.Module):
    def __init__(self, d_in=20, d_hidden=64, n_classes=4):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, d_hidden),
            nn.ReLU(),
            nn.Linear(d_hidden, d_hidden),
            nn.ReLU(),
            nn.Linear(d_hidden, n_classes),
        )

    def forward(self, x):
        return self.net(x)


def make_data(n=1024, d_in=20, n_classes=4, seed=4321):
    """Fixed synthetic data (same on every rank): inputs, a perturbed view
    of each input for the consistency loss, labels, and a labelled mask."""
    g = torch.Generator().manual_seed(seed)
    centers = 1.5 * torch.randn(n_classes, d_in, generator=g)
    y = torch.randint(0, n_classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, d_in, generator=g)
    x_aug = x + 0.3 * torch.randn(n, d_in, generator=g)
    labelled = torch.rand(n, generator=g) < 0.25
    return x, x_aug, y, labelled


@torch.no_grad()
def ema_update(teacher, student, decay):
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
    for tb, sb in zip(teacher.buffers(), student.buffers(), strict=True):
        tb.copy_(sb)


def main():
    args = parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    world = dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    print(f"rank={rank} local_rank={local_rank} world={world}", flush=True)

    # different randomness per worker; DDP broadcasts the model weights anyway
    torch.manual_seed(args.seed + rank)

    x, x_aug, y, labelled = make_data()
    model = MLP()
    # EMA teacher: created after the model is built, before the DDP wrapper
    teacher = copy.deepcopy(model)
    for p in teacher.parameters():
        p.requires_grad_(False)

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
            bx, bxa = x[sl][rank::world], x_aug[sl][rank::world]
            by, bl = y[sl][rank::world], labelled[sl][rank::world]
            n_global = args.global_batch // world

            logits = ddp_model(torch.cat([bx, bxa]))
            s_clean, s_aug = logits[: bx.shape[0]], logits[bx.shape[0] :]
            with torch.no_grad():
                t_probs = F.softmax(teacher(bx), dim=-1)
            # supervised term normalised by the (fixed) per-rank batch size
            sup = F.cross_entropy(s_clean[bl], by[bl], reduction="sum") / n_global
            cons = F.mse_loss(F.softmax(s_aug, dim=-1), t_probs)
            loss = sup + args.consistency_weight * cons

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ema_update(teacher, model, args.ema_decay)

            logged = loss.detach().clone()
            dist.all_reduce(logged)
            logged /= world
            if rank == 0:
                print(f"epoch={epoch} step={step} loss={logged.item():.6f}", flush=True)

    model.eval()
    with torch.no_grad():
        full_loss = F.cross_entropy(model(x), y).item()
        acc = (model(x).argmax(-1) == y).float().mean().item()
    checksum = sum(p.double().sum().item() for p in model.parameters())
    if rank == 0:
        print(f"final full-data ce={full_loss:.6f} acc={acc:.4f} weight_checksum={checksum:.6f}", flush=True)
        out_dir = os.environ.get("SM_MODEL_DIR", "/tmp/model_out")
        os.makedirs(out_dir, exist_ok=True)
        torch.save({"student": model.state_dict(), "teacher": teacher.state_dict()}, os.path.join(out_dir, "model.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
