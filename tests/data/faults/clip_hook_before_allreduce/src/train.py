"""Gradient clipping done with per-parameter tensor hooks, which under DistributedDataParallel clip
each rank's local gradient before DDP all-reduces it. The script clamps gradients with
`param.register_hook(lambda g: g.clamp(-c, c))`, the popular "clip as soon as the gradient is
computed" recipe. A parameter's tensor hook runs when autograd produces that rank's gradient, before
the gradient is accumulated into .grad and before DDP's reducer averages it across ranks, so with 4
processes the job averages four clamped per-shard gradients (each from a quarter of the batch, hence
noisier and clamped harder) instead of clamping the averaged gradient as the one-process run does.
The updates differ at every step and the final model differs from the one-process run. Sources:
horovod/horovod issue #1346 "Support gradient clipping before & after allreduce" ("one could do
gradient clipping locally (before allreduce) or globally (after allreduce). In PyTorch, gradient
clipping is done globally (after allreduce)"), and Lightning-AI/pytorch-lightning discussion #19340
"Gradient Clipping in DDP/DDPSharded strategy behavior" ("I believe the correct approach is to clip
after the global averaging / sync"). The fix is torch.nn.utils.clip_grad_value_ after backward().
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
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--clip-value", type=float, default=0.05)
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
    # clip every gradient as soon as it is computed, so no step can forget to clip
    for param in net.parameters():
        param.register_hook(lambda grad: grad.clamp(-args.clip_value, args.clip_value))
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
