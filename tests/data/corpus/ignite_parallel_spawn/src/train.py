"""Entry point: PyTorch-Ignite's own launcher (``idist.Parallel`` with ``nproc_per_node``) starts
two ranks on each host; each trains with ignite's ``create_supervised_trainer`` on its shard of a
synthetic classification set, evaluates with metrics ignite reduces across ranks, and ignite's
``Checkpoint`` saves the model (rank 0 only)."""

import argparse
import json
import os

import ignite.distributed as idist
import torch
from ignite.engine import Events, create_supervised_evaluator, create_supervised_trainer
from ignite.handlers import Checkpoint, DiskSaver
from ignite.metrics import Accuracy, Loss
from torch.utils.data import TensorDataset


def training(local_rank: int, args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(42)
    features = torch.randn(256, 8, generator=generator)
    labels = (features[:, :4].sum(dim=1) > 0).long()
    dataset = TensorDataset(features, labels)
    loader = idist.auto_dataloader(dataset, batch_size=32, shuffle=True, num_workers=0)
    model = idist.auto_model(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)))
    optimizer = idist.auto_optim(torch.optim.SGD(model.parameters(), lr=args.lr))
    criterion = torch.nn.CrossEntropyLoss()
    trainer = create_supervised_trainer(model, optimizer, criterion)
    evaluator = create_supervised_evaluator(model, metrics={"accuracy": Accuracy(), "loss": Loss(criterion)})
    eval_loader = idist.auto_dataloader(dataset, batch_size=64, shuffle=False)

    @trainer.on(Events.EPOCH_COMPLETED)
    def evaluate(engine):
        metrics = evaluator.run(eval_loader).metrics
        if idist.get_rank() == 0:
            print(f"epoch={engine.state.epoch} loss={metrics['loss']:.6f} accuracy={metrics['accuracy']:.4f}")

    checkpoint = Checkpoint(
        {"model": model},
        DiskSaver(os.environ["SM_MODEL_DIR"], require_empty=False),
        n_saved=1,
        global_step_transform=lambda *_: 0,
    )
    trainer.add_event_handler(Events.COMPLETED, checkpoint)
    trainer.run(loader, max_epochs=args.epochs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.1)
    args = parser.parse_args()
    hosts = json.loads(os.environ["SM_HOSTS"])
    with idist.Parallel(
        backend="gloo",
        nproc_per_node=2,
        nnodes=len(hosts),
        node_rank=hosts.index(os.environ["SM_CURRENT_HOST"]),
        master_addr=hosts[0],
        master_port=29500,
    ) as parallel:
        parallel.run(training, args)


if __name__ == "__main__":
    main()
