"""Contrastive (SimCLR/CLIP-style) pre-training of a small encoder with DDP.

The fault
---------
To keep the number of in-batch negatives equal to the global batch, the embeddings of
both views are gathered from every rank with ``torch.distributed.all_gather`` and the
symmetric InfoNCE loss is computed against the gathered matrix.  ``dist.all_gather``
is not differentiable: the tensors it writes carry no autograd history, *including the
slice that holds this rank's own embeddings*.  So with more than one process the loss
only back-propagates through the "anchor" side of each similarity (the local, un-gathered
operand); the gradient that should flow into the positive and negative keys is silently
dropped.  With one process the helper returns its input unchanged, every path carries
gradient, and training is correct; on 2x2 ranks it trains a different (worse) encoder
than one process with the same global batch, and nothing errors.

Public sources
--------------
- huggingface/accelerate issue #1154 "Question/Bug about accelerator.gather (how to use
  accelerate/accelerator.gather for contrastive learning)" - asks for a gather "that
  preserves the gradient"; points to the write-up "Gradient backpropagation with
  torch.distributed.all_gather".
- facebookresearch/vissl issue #474 "Questions on constructing pairs with distributed
  batch size in SimCLR" (the all-gather must not cut off the gradient).
- luyug/GradCache issue #25 "distributed loss for multiple GPUs" ("In Pytorch,
  distributed operations are not differentiable").
- PyTorch docs: torch.distributed.nn.functional.all_gather is the autograd-aware variant.

Fix
---
Gather with ``torch.distributed.nn.functional.all_gather`` (differentiable; its backward
sums the incoming gradients back to the owning rank), or gather with ``dist.all_gather``
and put the local, grad-carrying tensor back into its own slot
(``gathered[rank] = local``) - the latter still drops the cross-rank key gradients,
the former reproduces the single-process large-batch gradient.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def make_pairs(n=2048, dim=24, seed=11):
    """Two noisy 'views' of the same underlying item, as for SimCLR."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randn(n, dim, generator=g)
    view_a = items + 0.3 * torch.randn(n, dim, generator=g)
    view_b = items + 0.3 * torch.randn(n, dim, generator=g)
    return view_a, view_b


def gather_embeddings(x, world_size):
    """Concatenate this tensor from all ranks (rank order) so every rank sees all negatives."""
    if world_size == 1:
        return x
    chunks = [torch.zeros_like(x) for _ in range(world_size)]
    dist.all_gather(chunks, x.contiguous())
    return torch.cat(chunks, dim=0)


def info_nce(za, zb, rank, world_size, temperature=0.2):
    za = F.normalize(za, dim=1)
    zb = F.normalize(zb, dim=1)
    all_a = gather_embeddings(za, world_size)
    all_b = gather_embeddings(zb, world_size)
    # positives sit at this rank's offset in the gathered matrix
    targets = torch.arange(za.shape[0]) + rank * za.shape[0]
    loss_ab = F.cross_entropy(za @ all_b.t() / temperature, targets)
    loss_ba = F.cross_entropy(zb @ all_a.t() / temperature, targets)
    return 0.5 * (loss_ab + loss_ba)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)  # per process
    parser.add_argument("--lr", type=float, default=0.05)
    args, _ = parser.parse_known_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    world_size = dist.get_world_size()
    torch.manual_seed(0)

    view_a, view_b = make_pairs()
    dataset = TensorDataset(view_a, view_b)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True)

    encoder = nn.Sequential(nn.Linear(view_a.shape[1], 64), nn.ReLU(), nn.Linear(64, 16))
    model = DDP(encoder)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for step, (a, b) in enumerate(loader):
            loss = info_nce(model(a), model(b), rank, world_size)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if rank == 0 and step % 4 == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)

    if rank == 0:
        out_dir = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out_dir, exist_ok=True)
        torch.save(encoder.state_dict(), os.path.join(out_dir, "model.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
