"""A collective issued inside a branch that depends on the rank's own loss. To investigate loss
spikes, the loop compares each batch loss with a running average and, when the loss jumps above
``--spike-factor`` times that average, all-reduces the loss to log whether the spike is global.
Under DistributedDataParallel each rank computes the loss of its own shard of the batch, so the
spike test is true on some ranks and false on others: the ranks that take the branch block in an
``all_reduce`` the others never call, while those go on to the next forward/backward and its DDP
gradient all-reduce. The collectives no longer pair up across ranks (a size mismatch error, or a
hang once one rank leaves the loop). In one process the branch is taken or skipped as a whole and
the extra all-reduce is a no-op. Source: PyTorch tutorial "Distributed Training with Uneven Inputs
Using the Join Context Manager" ("collective communications require participation from all ranks in
the process group ... the other ranks will hang or error") and the torch.distributed documentation
(collectives must be called by all processes of the group in the same order); discuss.pytorch.org
thread "torch.distributed.barrier() hangs in DDP". The fix is to decide on a value every rank
agrees on (all-reduce the loss unconditionally, then test it) or to log without a collective.
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
    parser.add_argument("--spike-factor", type=float, default=2.0)
    return parser.parse_args()


def make_dataset(n=512, d=8):
    # a regression set with a few corrupted labels, which make some batches spike
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g)
    y = torch.tanh(x @ w) + 0.1 * torch.randn(n, 1, generator=g)
    corrupted = torch.rand(n, generator=g) < 0.04
    y[corrupted] += 4.0
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

    running = None
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for step, (features, target) in enumerate(loader):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(features), target)
            loss.backward()
            value = loss.item()
            # the bug: a collective inside a branch taken on this rank's own loss
            if running is not None and value > args.spike_factor * running:
                global_loss = loss.detach().clone()
                dist.all_reduce(global_loss)
                global_loss /= world
                print(
                    f"rank {rank}: loss spike at epoch={epoch} step={step}: "
                    f"local={value:.4f} global={global_loss.item():.4f}",
                    flush=True,
                )
            running = value if running is None else 0.9 * running + 0.1 * value
            optimizer.step()
            if rank == 0:
                print(f"epoch={epoch} step={step} loss={value:.4f}", flush=True)

    if rank == 0:
        model_dir = os.environ.get("SM_MODEL_DIR", "/tmp/model_out")
        os.makedirs(model_dir, exist_ok=True)
        torch.save(model.module.state_dict(), os.path.join(model_dir, "model.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
