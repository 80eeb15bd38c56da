"""DDP with processes spawned by the script itself, rendezvous on the first SageMaker host."""

import argparse
import csv
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def worker(local_rank: int, args: argparse.Namespace, hosts: list, node_rank: int) -> None:
    world = len(hosts) * args.procs_per_host
    rank = node_rank * args.procs_per_host + local_rank
    dist.init_process_group("gloo", init_method=f"tcp://{hosts[0]}:29500", rank=rank, world_size=world)
    torch.manual_seed(0)
    rows = []
    directory = os.environ["SM_CHANNEL_TRAIN"]
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), newline="") as handle:
            rows += [[float(x) for x in row] for row in csv.reader(handle)]
    data = torch.tensor(rows)
    dataset = TensorDataset(data[:, 1:], data[:, :1])
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
    model = DistributedDataParallel(torch.nn.Linear(data.shape[1] - 1, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    step = 0
    for _epoch in range(args.epochs):
        for features, target in DataLoader(dataset, batch_size=16, sampler=sampler):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(features), target)
            loss.backward()
            optimizer.step()
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            if rank == 0:
                print(f"step={step} loss={mean_loss.item() / world:.6f}", flush=True)
            step += 1
    if rank == 0:
        torch.save(model.module.state_dict(), os.path.join(os.environ["SM_MODEL_DIR"], "model.pt"))
    dist.destroy_process_group()
    # torch 2.x gloo can abort (SIGABRT) while the interpreter finalizes after a successful run
    # (pytorch/pytorch#179291): leave before finalization.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--procs-per-host", type=int, default=0)
    args = parser.parse_args()
    hosts = json.loads(os.environ["SM_HOSTS"])
    node_rank = hosts.index(os.environ["SM_CURRENT_HOST"])
    args.procs_per_host = args.procs_per_host or int(os.environ["SM_NUM_CPUS"])
    mp.spawn(worker, args=(args, hosts, node_rank), nprocs=args.procs_per_host, join=True)


if __name__ == "__main__":
    main()
