"""House-price regressor trained on raw dollar targets, with fp16 gradient
compression for the cross-host all-reduce.

What goes wrong
    The model predicts prices in dollars (a normalised head output times a fixed
    price scale of 1e5) and is trained with MSE on the raw targets; Adam is scale
    invariant, so on one process this trains fine even though the raw gradients
    are of order 1e9-1e10.  When the job spans more than one host the script
    registers DDP's built-in fp16_compress_hook to halve inter-host traffic.  That
    hook casts each gradient bucket to float16 BEFORE dividing by the world size
    and all-reducing.  float16 tops out at 65504, so the large gradients become
    inf, the all-reduced average is inf/NaN on every rank, Adam's moments turn to
    NaN and from the second step on the loss and every weight are NaN.  Nothing
    raises; the job "succeeds" and saves a NaN model.  The symptom looks like a
    learning-rate/instability or bad-data problem, but the cause is the
    half-precision gradient communication of unscaled gradients.

Public sources
    - PyTorch docs, "DDP Communication Hooks" (torch.distributed.algorithms.
      ddp_comm_hooks.default_hooks.fp16_compress_hook: casts the GradBucket to
      torch.float16, divides by the process-group size, all-reduces).
    - pytorch/pytorch PR #57410 "[Gradient Compression] divide by world size before
      all_reduce to avoid overflow": "FP16 gradient compression may run into 'inf'
      issue".  https://github.com/pytorch/pytorch/pull/57410
    - pytorch/pytorch PR #59522 / #59576 "Apply division first to avoid overflow"
      (large gradients overflow in FP16 during the all-reduce).
      https://github.com/pytorch/pytorch/pull/59522
    - pytorch/pytorch PR #55031 (ddp_comm_hooks.rst warning about gradient
      overflow for FP16).  https://github.com/pytorch/pytorch/pull/55031

Fix
    Compute the loss on normalised targets ((price - offset) / scale) so the
    gradients stay well inside float16 range, or drop the fp16 hook (on GPUs with
    NCCL, bf16_compress_hook keeps the float32 exponent range).
"""

import argparse
import math
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

GLOBAL_BATCH = 32
N_TRAIN = 1024
N_FEATURES = 8
PRICE_SCALE = 1e5
PRICE_OFFSET = 3e5


def make_dataset():
    g = torch.Generator().manual_seed(99)
    x = torch.randn(N_TRAIN, N_FEATURES, generator=g)
    w = torch.randn(N_FEATURES, generator=g)
    price = PRICE_OFFSET + PRICE_SCALE * (0.5 * (x @ w) + 0.3 * torch.tanh(x[:, 0] * x[:, 1]))
    price = price + 5e3 * torch.randn(N_TRAIN, generator=g)
    return TensorDataset(x, price)


class PriceModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(N_FEATURES, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x):
        return self.body(x).squeeze(1) * PRICE_SCALE + PRICE_OFFSET


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.01)
    args, _ = parser.parse_known_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    world = dist.get_world_size()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))

    dataset = make_dataset()
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=GLOBAL_BATCH // world, sampler=sampler)

    torch.manual_seed(0)
    model = PriceModel()
    ddp_model = DDP(model)
    if world > local_world:
        # the inter-host link is the bottleneck: send gradients in half precision
        ddp_model.register_comm_hook(state=None, hook=default_hooks.fp16_compress_hook)
    optimizer = torch.optim.Adam(ddp_model.parameters(), lr=args.lr)
    loss_fn = nn.MSELoss()

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for step, (x, price) in enumerate(loader):
            optimizer.zero_grad()
            loss = loss_fn(ddp_model(x), price)
            loss.backward()
            optimizer.step()
            if rank == 0 and step % 4 == 0:
                print(
                    f"epoch={epoch} step={step} loss={loss.item():.4g} rmse_usd={math.sqrt(loss.item()):.0f}",
                    flush=True,
                )

    if rank == 0:
        out_dir = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out_dir, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(out_dir, "model.pt"))
        print("saved model", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
