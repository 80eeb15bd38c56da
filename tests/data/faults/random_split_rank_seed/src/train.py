"""Train/validation split drawn with ``random_split`` after seeding every rank differently. The
script seeds the global RNG with ``seed + rank`` (a common recipe so that each worker gets its own
random stream) and then splits the dataset with ``torch.utils.data.random_split`` without a
generator, i.e. from that per-rank stream. Every rank therefore builds a different training
subset, and DistributedSampler, which shards indices of the subset it is given assuming that the
subset is the same everywhere, hands the ranks overlapping pieces of four different training sets:
some examples are trained on several times per epoch, others never, and part of each rank's
"validation" data ends up in other ranks' training batches. Only rank 0's split equals the split a
single process (seed + 0) uses, so the model differs from the one-process model and the
validation score is optimistic. DDP's parameter broadcast hides the per-rank seed for the
weights, not for the data. Source: Lightning-AI/pytorch-lightning issue #7728, "DataModules train
on validation data on MultiGPU" ("When random_split() is called in setup() on MultiGPU, it assigns
a different random split to each GPU, leading to overlap between the validation and train sets")
and issue #18638 "Tutorial DataModule leads to Validation data leakage in Multiprocessing". The fix
is ``random_split(..., generator=torch.Generator().manual_seed(seed))`` with the same seed on every
rank.
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset, random_split


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args()


def make_dataset(n=640, d=8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g)
    y = torch.tanh(x @ w) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


@torch.no_grad()
def evaluate(net, dataset):
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    y = torch.stack([dataset[i][1] for i in range(len(dataset))])
    return torch.nn.functional.mse_loss(net(x), y).item()


def main():
    args = parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(args.seed + rank)  # a different random stream on every worker

    train_set, val_set = random_split(make_dataset(), [0.8, 0.2])
    sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed)
    loader = DataLoader(train_set, batch_size=args.batch_size // world, sampler=sampler)

    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    model = DistributedDataParallel(net)  # broadcasts rank 0's initial weights
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
            print(f"epoch={epoch} val_loss={evaluate(model.module, val_set):.4f}", flush=True)

    if rank == 0:
        model_dir = os.environ.get("SM_MODEL_DIR", "/tmp/model_out")
        os.makedirs(model_dir, exist_ok=True)
        torch.save(model.module.state_dict(), os.path.join(model_dir, "model.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
