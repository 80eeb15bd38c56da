"""Entry point: two ranks started with ``multiprocessing.Process`` (spawn), DDP on CPU over gloo;
each epoch TorchMetrics' MeanSquaredError, R2Score and PearsonCorrCoef are updated on every
rank's shard and computed across ranks (their own all_gather of the metric states). The parent
joins both ranks and fails when one did."""

import argparse
import multiprocessing
import os
import sys

import torch
import torch.distributed as dist
import torchmetrics
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

WORLD = 2


def rank_main(rank: int, args: argparse.Namespace) -> None:
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29501", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(128, 4, generator=generator)
    target = features @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(128, generator=generator)
    dataset = TensorDataset(features, target)
    sampler = DistributedSampler(dataset, num_replicas=WORLD, rank=rank, shuffle=True, seed=0)
    model = DistributedDataParallel(torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    metrics = torchmetrics.MetricCollection(
        {
            "mse": torchmetrics.MeanSquaredError(),
            "r2": torchmetrics.R2Score(),
            "pearson": torchmetrics.PearsonCorrCoef(),
        }
    )
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for x, y in DataLoader(dataset, batch_size=16, sampler=sampler):
            optimizer.zero_grad()
            prediction = model(x).squeeze(1)
            torch.nn.functional.mse_loss(prediction, y).backward()
            optimizer.step()
            metrics.update(prediction.detach(), y)
        values = metrics.compute()  # synchronised across the ranks
        metrics.reset()
        if rank == 0:
            shown = " ".join(f"{name}={value.item():.6f}" for name, value in sorted(values.items()))
            print(f"epoch={epoch} {shown}", flush=True)
    if rank == 0:
        torch.save(model.module.state_dict(), os.path.join(os.environ["SM_MODEL_DIR"], "linear.pt"))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    ranks = [context.Process(target=rank_main, args=(rank, args)) for rank in range(WORLD)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join()
    failed = [rank for rank, process in enumerate(ranks) if process.exitcode != 0]
    if failed:
        sys.exit(f"ranks {failed} failed")
    print("both ranks done", flush=True)


if __name__ == "__main__":
    main()
