"""The learning rate is scaled by the world size although the global batch was kept constant. The
script follows both halves of the Lightning "GPU training (FAQ)" advice at once: it divides the
global --batch-size among the processes ("If you want distributed training to work exactly the same
as single GPU training, you need to set the batch_size in your DataLoader to original_batch_size /
num_devices") and it also applies the linear scaling rule of "How should I adjust the learning rate
when using multiple devices?" ("Because the effective batch size is larger when using multiple
devices, you need to adjust your learning rate accordingly"). The effective batch is unchanged, so
the second correction is wrong: with 4 processes every update is 4x too large and the model differs
from (or blows up relative to) the one-process run. Sources: Lightning-AI docs, "GPU training (FAQ)"
(lightning.ai/docs/pytorch/stable/accelerators/gpu_faq.html); Lightning-AI/pytorch-lightning
discussion #3706 "How to scale learning rate with batch size for DDP training?".
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
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size, split across processes")
    parser.add_argument("--lr", type=float, default=0.1, help="learning rate for one device")
    return parser.parse_args()


def make_dataset(n=512, d=8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g)
    y = torch.tanh(x @ w) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def main():
    args = parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    # keep the global batch identical to single-device training
    per_device_batch = args.batch_size // world
    # linear scaling rule for multi-device training (the bug: the batch was not made larger)
    lr = args.lr * world
    if rank == 0:
        print(f"world={world} per_device_batch={per_device_batch} lr={lr}", flush=True)

    dataset = make_dataset()
    sampler = DistributedSampler(dataset, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=per_device_batch, sampler=sampler)

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    model = DistributedDataParallel(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

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
