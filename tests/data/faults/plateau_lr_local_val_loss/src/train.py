"""ReduceLROnPlateau stepped with each rank's own validation loss. The script validates every few
steps on its DistributedSampler shard of the validation set and feeds that number straight into
``ReduceLROnPlateau.step(val_loss)``. Under DistributedDataParallel every rank only sees a quarter
of the validation set, so each rank's scheduler watches a different, noisier curve: the ranks cut
their learning rates at different moments, the replicas stop being identical (DDP averages the
gradients but every rank applies them with its own learning rate), and even rank 0 follows a
schedule that the whole-validation-set loss would never have produced. In one process the "local"
validation loss is the loss over the whole validation set and the schedule is the intended one.
Source: lucidrains/DALLE-pytorch issue #268, "Does (horovod + learning rate decay) work
properly?" ("It seems that the learning rate for each process(GPU) is not synchronized"; fix:
pass the averaged loss to the scheduler), and Lightning-AI/pytorch-lightning issue #4702
("logging question in DDP": a logged/monitored value is only averaged across processes with
``sync_dist=True``). The fix is to all-reduce the validation loss (sum and count) before calling
``scheduler.step``.
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size")
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--eval-every", type=int, default=2, help="validate every N steps")
    parser.add_argument("--patience", type=int, default=0)
    return parser.parse_args()


def make_data(n_train=512, n_val=128, d=8):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(d, 1, generator=g)
    x = torch.randn(n_train + n_val, d, generator=g)
    y = torch.tanh(x @ w) + 0.3 * torch.randn(n_train + n_val, 1, generator=g)
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


@torch.no_grad()
def validate(model, loader):
    model.eval()
    total, count = 0.0, 0
    for features, target in loader:
        total += torch.nn.functional.mse_loss(model(features), target, reduction="sum").item()
        count += target.numel()
    model.train()
    return total / count


def main():
    args = parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    train_set, val_set = make_data()
    train_sampler = DistributedSampler(train_set, shuffle=True, seed=0)
    train_loader = DataLoader(train_set, batch_size=args.batch_size // world, sampler=train_sampler)
    val_sampler = DistributedSampler(val_set, shuffle=False)
    val_loader = DataLoader(val_set, batch_size=64, sampler=val_sampler)

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    model = DistributedDataParallel(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    scheduler = ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=args.patience, threshold=1e-3)

    global_step = 0
    for epoch in range(args.epochs):
        train_sampler.set_epoch(epoch)
        for step, (features, target) in enumerate(train_loader):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(features), target)
            loss.backward()
            optimizer.step()
            global_step += 1
            if rank == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)
            if global_step % args.eval_every == 0:
                val_loss = validate(model, val_loader)
                # the bug: this rank's validation loss, not the loss over the whole validation set
                scheduler.step(val_loss)
                if rank == 0:
                    print(
                        f"epoch={epoch} step={step} val_loss={val_loss:.4f} lr={optimizer.param_groups[0]['lr']:.5f}",
                        flush=True,
                    )

    if rank == 0:
        model_dir = os.environ.get("SM_MODEL_DIR", "/tmp/model_out")
        os.makedirs(model_dir, exist_ok=True)
        torch.save(model.module.state_dict(), os.path.join(model_dir, "model.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
