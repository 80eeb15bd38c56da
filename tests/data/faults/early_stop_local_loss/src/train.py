"""Early stopping decided from each rank's own loss. The loop stops as soon as the running mean of
the last few batch losses drops below --target-loss, but under DistributedDataParallel every rank
only sees the losses of its own shard, so the ranks cross the target at different steps: the first
rank to stop leaves the loop (and the process group) while the others wait in DDP's gradient
all-reduce for the next batch, and the job hangs or dies with a broken collective. In one process
the running loss is the loss of the whole batch and stopping early is harmless. Source:
Lightning-AI/pytorch-lightning issue #379, "Early stopping with ddp bug": "if the stop condition is
met in one or more subprocess but not in all subprocess, the corresponding subprocess are stop but
the others ones are still running and the training hangs" (same pattern in pytorch/pytorch #134920).
The fix is to all-reduce the stop flag so that every rank takes the same decision.
"""

import argparse
import collections
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--target-loss", type=float, default=0.3)
    parser.add_argument("--window", type=int, default=4)
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

    dataset = make_dataset()
    sampler = DistributedSampler(dataset, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch_size // world, sampler=sampler)

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    model = DistributedDataParallel(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    recent = collections.deque(maxlen=args.window)
    stop = False
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for step, (features, target) in enumerate(loader):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(features), target)
            loss.backward()
            optimizer.step()
            recent.append(loss.item())
            if rank == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)
            # the bug: the stop decision uses this rank's own losses only
            if len(recent) == args.window and sum(recent) / len(recent) < args.target_loss:
                print(f"rank {rank}: target loss reached at epoch={epoch} step={step}, stopping", flush=True)
                stop = True
                break
        if stop:
            break

    if rank == 0:
        model_dir = os.environ.get("SM_MODEL_DIR", "/tmp/model_out")
        os.makedirs(model_dir, exist_ok=True)
        torch.save(model.module.state_dict(), os.path.join(model_dir, "model.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
