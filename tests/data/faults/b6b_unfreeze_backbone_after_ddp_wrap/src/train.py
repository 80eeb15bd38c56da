"""Two-phase fine-tuning of a small regressor: head-only warm-up, then unfreeze.

What the job is
---------------
A "pretrained" MLP backbone plus a fresh linear head is fine-tuned on a
synthetic regression task.  Epoch 0 trains only the head (backbone frozen with
``requires_grad_(False)``); from ``--unfreeze-epoch`` on the backbone is
unfrozen and trained too (the usual "gradual unfreezing" / Lightning
``BackboneFinetuning`` recipe).  The model is wrapped in
DistributedDataParallel once, right after construction, while the backbone is
still frozen.  The optimizer holds every parameter from the start, so the
backbone starts moving as soon as its parameters receive gradients.

What goes wrong
---------------
The DDP constructor walks the module once and only registers gradient
all-reduce hooks / bucket slots for the parameters that have
``requires_grad=True`` *at construction time*.  The backbone was frozen then,
so it is not part of the reducer.  Setting ``requires_grad=True`` later makes
autograd produce backbone gradients, but DDP never averages them: every rank
steps its backbone with the gradient of its own quarter of the global batch.
No error or warning is raised.  With one process nothing changes (there is
nothing to average), but at 2 hosts x 2 processes the four backbone replicas
silently drift apart from the moment of unfreezing, the head is trained on top
of four different feature extractors, and rank 0 saves its own private
backbone.  The loss curve from epoch 1 on and the saved weights differ from
the single-process run.

Public sources
--------------
* discuss.pytorch.org, "How does DistributedDataParallel handle parameters
  whose requires_grad flag is False?"
  https://discuss.pytorch.org/t/how-does-distributeddataparallel-handle-parameters-whose-requires-grad-flag-is-false/90736
  (mrshenli: the DDP ctor skips parameters with requires_grad=False, "you
  will have to set their require_grad field before passing it to DDP. After
  the ctor, changing the requires_grad attribute makes no difference.")
* Lightning-AI/pytorch-lightning issue #20340, "DDP doesn't work with
  pl.callbacks.BackboneFinetuning" (unfreezing after the DDP wrap leaves the
  replicas unsynchronised; workaround: keep everything trainable and gate
  with the learning rate).
* huggingface/transformers issue #416 (freezing/unfreezing BERT layers after
  the DDP wrap; "You should never try to change your model's parameters after
  wrapping up your model with DistributedDataParallel").

Fix
---
Never change ``requires_grad`` after the DDP constructor.  Either re-wrap the
model in a new DDP instance when the trainable set changes, or keep all
parameters trainable under DDP and "freeze" by giving the backbone's param
group ``lr=0`` (and zero weight decay) for the warm-up epochs.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--global-batch", type=int, default=64)
    p.add_argument("--unfreeze-epoch", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


class Regressor(nn.Module):
    def __init__(self, d_in=16, d_hidden=32):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(d_in, d_hidden),
            nn.Tanh(),
            nn.Linear(d_hidden, d_hidden),
            nn.Tanh(),
        )
        self.head = nn.Linear(d_hidden, 1)

    def forward(self, x):
        return self.head(self.backbone(x)).squeeze(-1)


def make_data(n=1024, d_in=16, seed=1234):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    w1 = torch.randn(d_in, 8, generator=g)
    w2 = torch.randn(8, generator=g)
    y = torch.tanh(x @ w1 / 4) @ w2 + 0.05 * torch.randn(n, generator=g)
    return x, y


def main():
    args = parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    world = dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    print(f"rank={rank} local_rank={local_rank} world={world}", flush=True)

    torch.manual_seed(args.seed)
    x, y = make_data()
    model = Regressor()

    # Phase 1: head-only warm-up; the "pretrained" backbone is frozen.
    for p in model.backbone.parameters():
        p.requires_grad_(False)

    ddp_model = DDP(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = nn.MSELoss()

    assert args.global_batch % world == 0
    n = x.shape[0]
    steps_per_epoch = n // args.global_batch
    for epoch in range(args.epochs):
        if epoch == args.unfreeze_epoch:
            # Phase 2: unfreeze the backbone and fine-tune end to end.
            for p in model.backbone.parameters():
                p.requires_grad_(True)
            if rank == 0:
                print(f"epoch={epoch} unfreezing backbone", flush=True)
        ddp_model.train()
        for step in range(steps_per_epoch):
            lo = step * args.global_batch
            gx = x[lo : lo + args.global_batch]
            gy = y[lo : lo + args.global_batch]
            # each rank takes an equal, disjoint slice of the global batch
            bx, by = gx[rank::world], gy[rank::world]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(ddp_model(bx), by)
            loss.backward()
            optimizer.step()
            logged = loss.detach().clone()
            dist.all_reduce(logged)
            logged /= world
            if rank == 0:
                print(f"epoch={epoch} step={step} loss={logged.item():.6f}", flush=True)

    model.eval()
    with torch.no_grad():
        final = loss_fn(model(x), y).item()
    checksum = sum(p.double().sum().item() for p in model.parameters())
    if rank == 0:
        print(f"final full-data loss={final:.6f} weight_checksum={checksum:.6f}", flush=True)
        out_dir = os.environ.get("SM_MODEL_DIR", "/tmp/model_out")
        os.makedirs(out_dir, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(out_dir, "model.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
