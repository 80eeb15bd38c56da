"""Residual MLP trained with activation checkpointing and an optional
deep-supervision (auxiliary) head.

What goes wrong
---------------
Each residual block is recomputed in backward with
``torch.utils.checkpoint.checkpoint(..., use_reentrant=True)``, and because the
auxiliary head is only used when ``--aux-weight > 0`` (it is 0 by default) the
model is wrapped with ``DistributedDataParallel(find_unused_parameters=True)``.
That combination is unsupported: with find_unused_parameters DDP walks the
autograd graph after forward to find parameters that will get no gradient, but
a reentrant checkpoint hides its block's parameters behind a single
CheckpointFunction node, so DDP marks them "unused" (ready) immediately; when
the reentrant backward later recomputes the block and their gradients arrive,
DDP sees them become ready a second time and aborts the first backward with
"Expected to mark a variable ready only once ... has been marked as ready
twice".  The message talks about parameters used outside forward or blocks
checkpointed several times -- neither is true here, every block is
checkpointed once.  With one process the script does not wrap the model in DDP
(nothing to synchronise), so single-device training runs fine.

Public sources
--------------
* PyTorch DistributedDataParallel docs, note on torch.utils.checkpoint: with
  use_reentrant=True DDP works only "when there are no unused parameters in the
  model and each layer is checkpointed at most once (make sure you are not
  passing find_unused_parameters=True to DDP)"; use_reentrant=False is
  recommended.
  https://pytorch.org/docs/stable/generated/torch.nn.parallel.DistributedDataParallel.html
* pytorch/pytorch issue #84589 / PR #106985, "Update DDP checkpoint
  documentation" / "Improved DDP checkpoint documentation".
  https://github.com/pytorch/pytorch/issues/84589
* microsoft/FocalNet issue #4, "torch.utils.checkpoint + DDP": works on a single
  GPU, fails under DDP with "Expected to mark a variable ready only once".
  https://github.com/microsoft/FocalNet/issues/4
* huggingface/accelerate issue #3536 and modelscope/ms-swift issue #3171 (same
  error; fixed with gradient_checkpointing_kwargs {"use_reentrant": false}).
  https://github.com/huggingface/accelerate/issues/3536

Fix
---
Use ``checkpoint(block, h, use_reentrant=False)`` (supported together with
find_unused_parameters=True), or drop find_unused_parameters by not
registering the auxiliary head when it is disabled.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


def make_data(n=4096, d=16, seed=2024):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, d, generator=g) / d**0.5
    y = (torch.tanh(x @ w) ** 2).sum(1, keepdim=True) + 0.05 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


class Block(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.norm = nn.LayerNorm(h)
        self.ff = nn.Sequential(nn.Linear(h, 4 * h), nn.GELU(), nn.Linear(4 * h, h))

    def forward(self, x):
        return x + self.ff(self.norm(x))


class ResMLP(nn.Module):
    def __init__(self, d_in=16, h=64, depth=4, grad_ckpt=True):
        super().__init__()
        self.grad_ckpt = grad_ckpt
        self.inp = nn.Linear(d_in, h)
        self.blocks = nn.ModuleList([Block(h) for _ in range(depth)])
        self.out = nn.Linear(h, 1)
        self.aux_out = nn.Linear(h, 1)  # deep supervision on the middle block

    def forward(self, x, use_aux=False):
        h = self.inp(x)
        mid = None
        for i, blk in enumerate(self.blocks):
            # recompute block activations in backward to save memory
            h = checkpoint(blk, h, use_reentrant=True) if self.grad_ckpt else blk(h)
            if i == len(self.blocks) // 2 - 1:
                mid = h
        y = self.out(h)
        return (y, self.aux_out(mid)) if use_aux else (y, None)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--aux-weight", type=float, default=0.0)
    p.add_argument("--grad-ckpt", type=int, default=1)
    args, _ = p.parse_known_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)

    data = make_data()
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler, drop_last=True)

    model = ResMLP(grad_ckpt=bool(args.grad_ckpt))
    use_aux = args.aux_weight > 0
    net = model
    if world > 1:
        # aux_out gets no gradient when deep supervision is off
        net = DDP(model, find_unused_parameters=True)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr)

    step = 0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        net.train()
        for x, y in loader:
            pred, aux = net(x, use_aux=use_aux)
            loss = F.mse_loss(pred, y)
            if use_aux:
                loss = loss + args.aux_weight * F.mse_loss(aux, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if rank == 0 and step % 8 == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)
            step += 1

    if rank == 0:
        out_dir = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out_dir, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(out_dir, "model.pt"))
        print(f"saved model to {out_dir}/model.pt", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
