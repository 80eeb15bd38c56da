"""``ZeroRedundancyOptimizer.consolidate_state_dict`` called on rank 0 only. The script shards the
Adam state with ZeroRedundancyOptimizer and, like most checkpointing code, guards the whole
checkpoint block with ``if rank == 0``: consolidate the optimizer state, then ``torch.save`` it
with the model. But consolidation is a collective: each rank broadcasts the optimizer-state shard
it owns, so it must be called on every rank. Rank 0 waits in those broadcasts while the other
ranks have already moved on to the next epoch's forward/backward and its DDP gradient all-reduce;
the collectives do not match and the job errors or hangs at the first end-of-epoch checkpoint.
In one process rank 0 owns the whole optimizer state and consolidation has nobody to wait for.
Source: PyTorch documentation of ``torch.distributed.optim.ZeroRedundancyOptimizer``
(``consolidate_state_dict``: "This needs to be called on all ranks"); pytorch/pytorch PR #60285
("Clean Up ZeRO", review: "users might call .state_dict() on one rank only (in practice they often
will), which means that you cannot consolidate at that point with any of the collectives");
pytorch/ignite issue #2623 "Consolidate ZeRO state before checkpoint saving" ("This call needs to
be issued on all ranks and point toward the same consolidating rank"). The fix is to call
``optimizer.consolidate_state_dict(to=0)`` on every rank and only save on rank 0.
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size")
    parser.add_argument("--lr", type=float, default=0.01)
    return parser.parse_args()


def make_dataset(n=512, d=8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g)
    y = torch.tanh(x @ w) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def main():
    args = parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model_dir = os.environ.get("SM_MODEL_DIR", "/tmp/model_out")

    dataset = make_dataset()
    sampler = DistributedSampler(dataset, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch_size // world, sampler=sampler)

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)
    )
    model = DistributedDataParallel(net)
    optimizer = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.Adam, lr=args.lr)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for step, (features, target) in enumerate(loader):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(features), target)
            loss.backward()
            optimizer.step()
            if rank == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)

        # end-of-epoch checkpoint (the bug: consolidation is a collective, called on rank 0 only)
        if rank == 0:
            optimizer.consolidate_state_dict(to=0)
            os.makedirs(model_dir, exist_ok=True)
            torch.save(
                {"epoch": epoch, "model": model.module.state_dict(), "optimizer": optimizer.state_dict()},
                os.path.join(model_dir, "checkpoint.pt"),
            )
            print(f"epoch={epoch} checkpoint saved", flush=True)

    if rank == 0:
        os.makedirs(model_dir, exist_ok=True)
        torch.save(model.module.state_dict(), os.path.join(model_dir, "model.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
