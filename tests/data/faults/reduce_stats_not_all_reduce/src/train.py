"""Input-normalisation statistics combined with ``dist.reduce`` instead of ``dist.all_reduce``. Each
rank sums its DistributedSampler shard of the raw features (sum, sum of squares, count) and the
per-shard sums are combined with ``dist.reduce(stats, dst=0)``; every rank then standardises its
features with the result. Only the destination rank receives the reduced tensor: on the other
ranks the buffer holds a partial or local sum (with gloo it is left half-reduced), so ranks 1..3
standardise their batches with wrong means and scales, their gradients are computed on inputs in a
different coordinate system, and DDP averages those gradients into rank 0's update. The model
rank 0 saves is therefore not the one a single process (where ``reduce`` is a no-op and the stats
are global) trains. Source: PyTorch documentation of ``torch.distributed.reduce`` ("Only the
process with rank ``dst`` is going to receive the final result"); pytorch/pytorch issue #76527,
"Non target rank receives result of 'reduce' op when backend is 'gloo'" (non-destination ranks
see partial sums) and #21480 "ProcessGroupGloo reduce produces wrong result"; the same mistake
was fixed in huggingface/accelerate PR #513 ("it should also be all_reduce on GPU to avoid bugs").
The fix is ``dist.all_reduce(stats)``.
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


def make_raw_data(n=512, d=8):
    # raw sensor-like features: very different offsets and scales per column
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g)
    y = torch.tanh(z @ w) + 0.1 * torch.randn(n, 1, generator=g)
    offset = torch.linspace(-20.0, 30.0, d)
    scale = torch.logspace(-1, 1.5, d)
    return z * scale + offset, y


def feature_stats(features, indices):
    """Mean and std of the features over the whole training set, computed shard by shard."""
    x = features[indices].double()
    d = x.shape[1]
    stats = torch.cat([x.sum(0), (x * x).sum(0), torch.tensor([float(len(indices))], dtype=torch.float64)])
    # combine the per-shard sums of all ranks (the bug: only dst=0 gets the total)
    dist.reduce(stats, dst=0)
    count = stats[2 * d]
    mean = stats[:d] / count
    var = stats[d : 2 * d] / count - mean * mean
    return mean.float(), var.clamp_min(1e-8).sqrt().float()


def main():
    args = parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    raw_x, y = make_raw_data()
    sampler = DistributedSampler(TensorDataset(raw_x, y), shuffle=True, seed=0)
    mean, std = feature_stats(raw_x, list(iter(sampler)))
    if rank == 0:
        print(f"feature mean={[round(v, 3) for v in mean.tolist()]}", flush=True)
    dataset = TensorDataset((raw_x - mean) / std, y)
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
            if rank == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)

    if rank == 0:
        model_dir = os.environ.get("SM_MODEL_DIR", "/tmp/model_out")
        os.makedirs(model_dir, exist_ok=True)
        torch.save(model.module.state_dict(), os.path.join(model_dir, "model.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
