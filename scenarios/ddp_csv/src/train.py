"""Linear regression with DistributedDataParallel on a CSV channel (the reference job).

Reads what SageMaker gives a training script: hyperparameters on the command line,
SM_CHANNEL_TRAIN and SM_MODEL_DIR. Rank 0 logs the all-reduced loss of every step and saves
the model; every rank sees its own shard of the data through DistributedSampler.
"""

import argparse
import csv
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def str2bool(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


def load_csv(directory: str) -> TensorDataset:
    rows = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), newline="") as handle:
            rows += [[float(x) for x in row] for row in csv.reader(handle)]
    data = torch.tensor(rows)
    return TensorDataset(data[:, 1:], data[:, :1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--shuffle", type=str2bool, default=False)
    parser.add_argument("--log-lines-per-step", type=int, default=0, help="extra log volume (benchmarks)")
    args = parser.parse_args()

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if torch.cuda.is_available() else torch.device("cpu")
    torch.manual_seed(0)
    dataset = load_csv(os.environ["SM_CHANNEL_TRAIN"])
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=args.shuffle, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)
    model = DistributedDataParallel(torch.nn.Linear(dataset.tensors[0].shape[1], 1).to(device))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate)

    step = 0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for features, target in loader:
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(features.to(device)), target.to(device))
            loss.backward()
            optimizer.step()
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            if rank == 0:
                print(f"epoch={epoch} step={step} loss={mean_loss.item() / world:.6f}", flush=True)
            for line in range(args.log_lines_per_step):
                print(f"debug rank={rank} step={step} line={line} grad_norm=0.0 lr={args.learning_rate}")
            step += 1
    if rank == 0:
        torch.save(model.module.state_dict(), os.path.join(os.environ["SM_MODEL_DIR"], "model.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # torch 2.x gloo can abort (SIGABRT, "terminate called without an active exception") while
    # the interpreter finalizes, after a run that succeeded (pytorch/pytorch#179291): exit before it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
