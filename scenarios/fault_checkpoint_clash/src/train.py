"""DDP regression that checkpoints every epoch, resumable on a Spot restart.

The planted fault (failure mode 15 in the contract notes): "local rank 0 of each node saves"
is right for a node-local disk but not for SageMaker, which syncs every instance's
/opt/ml/checkpoints to one S3 prefix. Each host saves `checkpoint-<epoch>.pt` under the same
name, and with it its own data-loader state (the shuffling generator of its first rank), so the
hosts' files differ and overwrite each other in S3: a restarted job resumes every host with one
host's state.
"""

import argparse
import csv
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

CHECKPOINTS = "/opt/ml/checkpoints"


def load_csv(directory: str) -> TensorDataset:
    rows = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), newline="") as handle:
            rows += [[float(x) for x in row] for row in csv.reader(handle)]
    data = torch.tensor(rows)
    return TensorDataset(data[:, 1:], data[:, :1])


def latest_checkpoint() -> str | None:
    names = sorted(
        (n for n in os.listdir(CHECKPOINTS) if n.startswith("checkpoint-")),
        key=lambda n: int(n.split("-")[1].split(".")[0]),
    )
    return os.path.join(CHECKPOINTS, names[-1]) if names else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ["LOCAL_RANK"])
    torch.manual_seed(0)
    dataset = load_csv(os.environ["SM_CHANNEL_TRAIN"])
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
    shuffle = torch.Generator().manual_seed(rank)  # each rank's own augmentation noise
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)
    model = DistributedDataParallel(torch.nn.Linear(dataset.tensors[0].shape[1], 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate)

    start = 0
    resume = latest_checkpoint()
    if resume:
        state = torch.load(resume)
        model.module.load_state_dict(state["model"])
        shuffle.set_state(state["noise"])
        start = state["epoch"] + 1
        print(f"resumed from {resume} at epoch {start}", flush=True)

    step = 0
    for epoch in range(start, args.epochs):
        for features, target in loader:
            noisy = features + 0.01 * torch.randn(features.shape, generator=shuffle)
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(noisy), target)
            loss.backward()
            optimizer.step()
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            if rank == 0:
                print(f"epoch={epoch} step={step} loss={mean_loss.item() / world:.6f}", flush=True)
            step += 1
        if local_rank == 0:  # BUG: one writer per node, but every node syncs to the same S3 prefix
            torch.save(
                {"model": model.module.state_dict(), "noise": shuffle.get_state(), "epoch": epoch},
                os.path.join(CHECKPOINTS, f"checkpoint-{epoch}.pt"),
            )
    if rank == 0:
        torch.save(model.module.state_dict(), os.path.join(os.environ["SM_MODEL_DIR"], "model.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    sys.stdout.flush()  # gloo can abort while the interpreter finalizes (pytorch/pytorch#179291)
    sys.stderr.flush()
    os._exit(0)
