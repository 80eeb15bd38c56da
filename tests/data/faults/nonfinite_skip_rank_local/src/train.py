"""A "skip the update on a non-finite loss" guard that looks at the rank-local loss. One record of the
trip dataset has distance 0 and duration 0, so its speed feature is 0/0 = NaN. In one process the
batch that holds it has a NaN loss, the guard skips that optimizer step and training goes on. Under
DistributedDataParallel only the rank that drew the record sees a NaN loss and skips, but the
backward pass has already all-reduced its NaN gradients into every other rank's gradients; those
ranks see a finite local loss, call optimizer.step() and write NaN into their weights, and from the
next step on every rank's gradients are NaN. The model rank 0 saves is NaN. Sources:
Lightning-AI/pytorch-lightning #5243 ("Returning None from training_step with multi GPU DDP
training") and the fix proposal PR #5359, whose "skip_if_any" strategy skips the update on all
processes when any one has an invalid loss; the same bug fixed in ecmwf/WeatherGenerator PR #2718
("losses are rank-local, so a NaN ... was never skipped and its gradients poisoned the all-reduce").
The fix is to all-reduce the "loss is finite" flag and skip on every rank together.
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size")
    parser.add_argument("--lr", type=float, default=0.05)
    return parser.parse_args()


def make_trip_dataset(n=512):
    """Synthetic taxi trips: predict the fare from distance, duration, speed and 5 other features."""
    g = torch.Generator().manual_seed(0)
    distance = torch.rand(n, generator=g) * 10 + 0.5
    duration = distance / (torch.rand(n, generator=g) * 0.5 + 0.25)
    distance[137] = 0.0  # a cancelled trip that was logged anyway
    duration[137] = 0.0
    speed = distance / duration  # 0/0 -> NaN for the cancelled trip
    other = torch.randn(n, 5, generator=g)
    features = torch.cat([distance[:, None] / 10, duration[:, None] / 40, speed[:, None], other], 1)
    fare = 2.5 + 1.5 * distance + 0.2 * duration + other[:, 0] + 0.1 * torch.randn(n, generator=g)
    fare[137] = 2.5
    return TensorDataset(features, fare[:, None] / 10)


def main():
    args = parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    dataset = make_trip_dataset()
    sampler = DistributedSampler(dataset, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch_size // world, sampler=sampler)

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    model = DistributedDataParallel(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for step, (features, target) in enumerate(loader):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(features), target)
            loss.backward()
            # the bug: the guard looks at this rank's loss, the gradients are everyone's
            if not torch.isfinite(loss):
                print(f"rank {rank}: non-finite loss at epoch={epoch} step={step}, skipping update", flush=True)
                continue
            optimizer.step()
            if rank == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)

    if rank == 0:
        model_dir = os.environ.get("SM_MODEL_DIR", "/tmp/model_out")
        os.makedirs(model_dir, exist_ok=True)
        torch.save(model.module.state_dict(), os.path.join(model_dir, "model.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
