"""``torch.nn.utils.clip_grad_norm_`` applied to a FullyShardedDataParallel model. After backward,
FSDP leaves each rank with the gradient of its own shard of the flattened parameters only, so
``clip_grad_norm_(model.parameters(), max_norm)`` computes the norm of that rank's shard, not of the
whole gradient, and scales every shard by a different factor. The update the ranks apply is then
neither the clipped nor the unclipped global gradient: its direction changes, and the model the job
ends with differs from the one a single process (whose one shard is the whole gradient) trains
with the same data and hyperparameters. Nothing errors; training just goes elsewhere. Source:
pytorch/pytorch issue #72548, "Implement clip_grad_norm for FSDP models" ("since parameters are
sharded across ranks, simply using clip_grad_norm_ would be incorrect as model.parameters() does
not return the full set of unsharded parameters"); PyTorch documentation of
``FullyShardedDataParallel.clip_grad_norm_`` (it "handles the fact that gradients are sharded
across ranks"); Lightning's FSDP precision plugin notes that "using torch.nn.utils.clip_grad_norm_
is incorrect for FSDP module". The fix is ``model.clip_grad_norm_(max_norm)``.
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FullStateDictConfig, StateDictType
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--max-grad-norm", type=float, default=0.5)
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

    dataset = make_dataset()
    sampler = DistributedSampler(dataset, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch_size // world, sampler=sampler)

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
    )
    model = FSDP(net, device_id=torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for step, (features, target) in enumerate(loader):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(features), target)
            loss.backward()
            # the bug: norm of this rank's gradient shard, not of the whole gradient
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            if rank == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f} grad_norm={grad_norm.item():.4f}", flush=True)

    # gathering the full state dict is a collective: every rank takes part, rank 0 writes
    with FSDP.state_dict_type(
        model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=False, rank0_only=False)
    ):
        state = model.state_dict()
    if rank == 0:
        model_dir = os.environ.get("SM_MODEL_DIR", "/tmp/model_out")
        os.makedirs(model_dir, exist_ok=True)
        torch.save(state, os.path.join(model_dir, "model.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
