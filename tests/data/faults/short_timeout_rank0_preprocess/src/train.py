"""Rank 0 preprocesses the data alone while the other ranks wait in a collective whose timeout is
shorter than the preprocessing. Rank 0 scans the raw event log to compute the feature
normalization statistics and broadcasts them; the other ranks enter the broadcast at once and wait.
The process group was created with a short timeout (to "fail fast" instead of hanging for the
default 30 minutes), and the scan takes longer than that, so every waiting rank raises "Timed out
waiting ...ms for recv operation to complete" and the job fails. In one process nobody waits and the
run succeeds. (Times are scaled down for a test job: a scan of a few seconds against a 2-second
timeout stands for a long dataset build against the 30-minute default.) Sources:
Lightning-AI/pytorch-lightning issue #19266 "Timeout while waiting for prepare_data to finish"
("the other processes are waiting for the first process to finish and ... there is a timeout for
this"), fixed by PR #19448 "Create barrier without timeout in prepare_data()"; PyTorch docs,
torch.distributed.init_process_group, `timeout`: "Timeout for operations executed against the
process group". The fix is a timeout longer than the slowest rank-0-only step, or sharing the work.
"""

import argparse
import math
import os
import random
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--log-rows", type=int, default=500_000)
    parser.add_argument("--collective-timeout-s", type=float, default=2.0)
    return parser.parse_args()


def raw_event_log(n_rows, seed=0):
    """Stand-in for reading a large CSV export line by line."""
    rnd = random.Random(seed)
    for _ in range(n_rows):
        yield ",".join(f"{rnd.gauss(0.5, 2.0):.6f}" for _ in range(8))


def feature_stats(lines):
    count, total, total_sq = 0, [0.0] * 8, [0.0] * 8
    for line in lines:
        for i, value in enumerate(float(v) for v in line.split(",")):
            total[i] += value
            total_sq[i] += value * value
        count += 1
    mean = [t / count for t in total]
    std = [math.sqrt(max(q / count - m * m, 1e-12)) for q, m in zip(total_sq, mean, strict=False)]
    return torch.tensor([mean, std])


def make_dataset(stats, n=512, d=8):
    g = torch.Generator().manual_seed(0)
    raw = 0.5 + 2.0 * torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g)
    x = (raw - stats[0]) / stats[1]
    y = torch.tanh(x @ w) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def main():
    args = parse_args()
    dist.init_process_group("gloo", timeout=timedelta(seconds=args.collective_timeout_s))
    rank, world = dist.get_rank(), dist.get_world_size()

    # only rank 0 reads the raw log; the others receive the statistics
    if rank == 0:
        stats = feature_stats(raw_event_log(args.log_rows))
        print(f"feature stats from {args.log_rows} rows: mean={stats[0, 0]:.3f} std={stats[1, 0]:.3f}", flush=True)
    else:
        stats = torch.empty(2, 8)
    dist.broadcast(stats, src=0)

    dataset = make_dataset(stats)
    sampler = DistributedSampler(dataset, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch_size // world, sampler=sampler)

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    model = DistributedDataParallel(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for step, (features, target) in enumerate(loader):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(features), target)
            loss.backward()
            optimizer.step()
            if rank == 0 and step % 2 == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)

    if rank == 0:
        model_dir = os.environ.get("SM_MODEL_DIR", "/tmp/model_out")
        os.makedirs(model_dir, exist_ok=True)
        torch.save(model.module.state_dict(), os.path.join(model_dir, "model.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
