"""Each rank creates only the process group of its own node. The script builds a node-local group so
that local rank 0 of every node can prepare the training data once and broadcast it to its node
peers, and it calls dist.new_group() only with its own node's ranks. new_group is a collective over
the whole job: "This function requires that all processes in the main group (i.e. all processes
that are part of the distributed job) enter this function, even if they are not going to be members
of the group. Additionally, groups should be created in the same order in all processes." On 2 hosts
x 2 processes the two nodes create different groups in the same slot, group creation never completes
on one node, and the job hangs (the other node waits for it in DDP's initial parameter broadcast).
In one process, or with every process on one host, there is a single node group and nothing goes
wrong. Source: PyTorch docs, torch.distributed.new_group (the sentence quoted above). The fix is to
have every rank create every node's group, in the same order, and keep the one it belongs to.
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


def build_training_tensors(n=512, d=8):
    """Stand-in for downloading and decoding the dataset (done once per node)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g)
    y = torch.tanh(x @ w) + 0.1 * torch.randn(n, 1, generator=g)
    return torch.cat([x, y], 1)


def main():
    args = parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    node = rank // local_world
    node_leader = node * local_world

    # the bug: only this node's ranks call new_group for this node's group
    node_group = dist.new_group(list(range(node_leader, node_leader + local_world)))

    table = build_training_tensors() if local_rank == 0 else torch.empty(512, 9)
    dist.broadcast(table, src=node_leader, group=node_group)
    dataset = TensorDataset(table[:, :8].contiguous(), table[:, 8:].contiguous())

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
