"""Tiny next-token language model with tied input/output embeddings, trained with FSDP.

What goes wrong
---------------
The output projection reuses the token embedding matrix (weight tying:
``self.lm_head.weight = self.embed.weight``), and the FSDP auto-wrap policy
puts every ``nn.Embedding`` in an FSDP unit of its own (to shard the largest
tensor separately), while ``lm_head`` stays in the root unit.  FSDP only
guarantees that a parameter is gathered (unsharded) while *its own* unit runs
forward/backward.  The shared tensor is owned by the embedding's unit, which is
resharded right after the embedding lookup; when the root unit later runs
``lm_head`` the "weight" it sees is this rank's flat shard of the embedding, not
a (vocab x dim) matrix, and the linear layer fails with a shape error such as
``RuntimeError: size mismatch, got input (..), mat (..x..), vec (..)``.  The
message points at tensor shapes in the model's forward, not at the wrapping
policy.  With one process FSDP falls back to NO_SHARD (nothing is ever
resharded), the tied weight is always the full matrix, and training works.

Public sources
--------------
* Lightning-AI/pytorch-lightning PR #21613 "Warn when FSDP auto-wrap policy
  splits tied weights" (closes issue #21403): "When users include
  torch.nn.Embedding in their FSDP auto-wrap policy, the embedding gets its own
  FSDP unit while the tied lm_head stays in the root unit. FSDP shards each unit
  independently, so lm_head sees a flat/sharded tensor instead of the expected
  2D weight - causing a size mismatch deep in torch with no indication of the
  real cause." https://github.com/Lightning-AI/pytorch-lightning/pull/21613
* mosaicml/examples PR #11 "Tie up weights of embedding layer and lm_head"
  (getting shared parameters to work with FSDP requires keeping both in the same
  unit). https://github.com/mosaicml/examples/pull/11
* FullyShardedDataParallel docs: shared parameters must belong to the same FSDP
  unit (https://pytorch.org/docs/stable/fsdp.html).

Fix
---
Keep tied modules in the same FSDP unit: do not auto-wrap ``nn.Embedding``
separately (``ModuleWrapPolicy({Block})``, so embedding and lm_head both live
in the root unit), or wrap a common parent of both.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

VOCAB, SEQ = 256, 32


def make_data(n, seed):
    # Sequences from a fixed sparse Markov chain: each token has 4 likely successors.
    g0 = torch.Generator().manual_seed(11)
    succ = torch.randint(0, VOCAB, (VOCAB, 4), generator=g0)
    g = torch.Generator().manual_seed(seed)
    seqs = torch.empty(n, SEQ + 1, dtype=torch.long)
    seqs[:, 0] = torch.randint(0, VOCAB, (n,), generator=g)
    for t in range(SEQ):
        pick = torch.randint(0, 4, (n,), generator=g)
        seqs[:, t + 1] = succ[seqs[:, t], pick]
    return TensorDataset(seqs[:, :-1], seqs[:, 1:])


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, h):
        return h + self.mlp(self.norm(h))


class TinyLM(nn.Module):
    def __init__(self, d=64, depth=2):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.blocks = nn.ModuleList([Block(d) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, VOCAB, bias=False)
        self.lm_head.weight = self.embed.weight  # weight tying
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, ids):
        h = self.embed(ids)
        for blk in self.blocks:
            h = blk(h)
        return self.lm_head(self.norm(h))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--global-batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    train_ds, val_ds = make_data(768, 0), make_data(256, 1)
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(train_ds, batch_size=args.global_batch_size // world, sampler=sampler)

    torch.manual_seed(0)
    model = FSDP(
        TinyLM(),
        # Transformer blocks and the (large) embedding table each get their own FSDP unit.
        auto_wrap_policy=ModuleWrapPolicy({Block, nn.Embedding}),
        device_id=torch.device("cpu"),
        # Original parameter names/shapes are needed for the no-decay groups below.
        use_orig_params=True,
    )
    decay, no_decay = [], []
    for name, prm in model.named_parameters():
        (no_decay if ("norm" in name or name.endswith("bias")) else decay).append(prm)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
    )
    loss_fn = nn.CrossEntropyLoss()

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        for step, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            loss = loss_fn(model(x).reshape(-1, VOCAB), y.reshape(-1))
            loss.backward()
            optimizer.step()
            if rank == 0 and step % 8 == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)
        # FSDP forward is collective: every rank evaluates the (small) validation set.
        model.eval()
        with torch.no_grad():
            xv, yv = val_ds.tensors
            val = loss_fn(model(xv).reshape(-1, VOCAB), yv.reshape(-1)).item()
        if rank == 0:
            print(f"epoch={epoch} val_loss={val:.4f}", flush=True)

    state = model.state_dict()  # full (unsharded) state dict; collective, so every rank calls it
    if rank == 0:
        out = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out, exist_ok=True)
        torch.save(state, os.path.join(out, "model.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
