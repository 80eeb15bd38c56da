"""Multi-class classifier trained with DDP, with node-local communication groups.

What goes wrong
---------------
The script creates one process group per machine with ``dist.new_subgroups``
(the per-node groups the SyncBatchNorm recipe uses to keep traffic on the fast
intra-node link) and hands that group to ``DistributedDataParallel`` via
``process_group=``. DDP then broadcasts the initial weights and all-reduces the
gradients only inside each node. The DistributedSampler still shards the data
over the whole world, so node 0's two ranks train one replica on half the data
and node 1's two ranks train another replica on the other half; the replicas
never exchange anything and drift apart. Rank 0 saves node 0's model, trained on
half of the data. At one process (one node, one group) nothing differs; on 2x2
the job finishes normally with reasonable-looking losses on rank 0. No error.

Public sources
--------------
* pytorch/pytorch issue #48804 "Improve torch.distributed.new_group()
  documentation in the context of SyncBatchNorm" (per-node groups passed to
  convert_sync_batchnorm).
* pytorch/pytorch issue #53962 "[RFC] Provide a util function ... for
  initializing per-machine process groups" (origin of dist.new_subgroups; meant
  for intra-node allreduce in hierarchical SGD / SyncBatchNorm).
* PyTorch docs DistributedDataParallel, ``process_group``: "The process group to
  be used for distributed data all-reduction" - gradients are averaged only over
  that group.

Fix
---
Use the default (world) group for DDP (``DDP(model)``); keep the node-local
group only for what is meant to be node-local (SyncBatchNorm on GPUs, local
metrics), or use hierarchical SGD/post-local SGD hooks that also sync globally.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def make_data(n=3072, d=20, classes=5):
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(classes, d, generator=g) * 0.35
    y = torch.randint(classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, d, generator=g)
    return TensorDataset(x, y)


def build_model(d=20, classes=5):
    return nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, classes))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    # one group per machine: keeps the heavy traffic on the intra-node link
    node_group, _ = dist.new_subgroups(group_size=local_world)
    torch.manual_seed(rank)

    ds = make_data()
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(ds, batch_size=args.batch_size, sampler=sampler)

    model = DDP(build_model(), process_group=node_group)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        for step, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            if step % 8 == 0:
                logged = loss.detach().clone()
                dist.all_reduce(logged, group=node_group)
                if rank == 0:
                    print(f"epoch={epoch} step={step} loss={logged.item() / local_world:.4f}", flush=True)

    if rank == 0:
        out = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out, exist_ok=True)
        torch.save(model.module.state_dict(), os.path.join(out, "model.pt"))
        print("saved", os.path.join(out, "model.pt"), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
