"""The loss is all-reduced and divided by the world size before backward(). torch.distributed's
all_reduce is not differentiable: it overwrites the loss value in place but autograd still sees only
this rank's graph, so the backward pass gives this rank's gradient times 1/world_size, and DDP then
averages those gradients once more. With 4 processes every gradient is 4x too small, which is the
same as training at a quarter of the learning rate, and the model ends far from the one-process run
(where all_reduce over one process and the division by 1 are no-ops). Source: NVIDIA/apex issue #664
"Should I reduce the loss before the backward function?", which compares `dist.all_reduce(loss);
loss.div_(world_size); loss.backward()` with reducing a detached copy for logging only, and
facebookresearch/maskrcnn-benchmark #84 ("The reduction in the losses is indeed only needed for
logging purposes ... The gradient averaging is handled by DistributedDataParallel"). The fix is to
reduce a detached clone for logging and call backward() on the local loss.
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

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for step, (features, target) in enumerate(loader):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(features), target)
            # average the loss over all workers so that every rank optimizes the global loss
            dist.all_reduce(loss, op=dist.ReduceOp.SUM)
            loss = loss / world
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
