"""House-price regressor trained with FSDP in float16 mixed precision and a GradScaler.

The fault
---------
fp16 training needs dynamic loss scaling, so the script uses ``torch.amp.GradScaler``,
the scaler it used on one GPU.  With FSDP every rank owns only a shard of the flat
gradient, and the plain GradScaler's inf/NaN check (``unscale_``) and its scale update
look only at the local tensors.  When the scaled gradient of one layer overflows, only
the rank whose shard holds that layer sees ``inf``: that rank skips its optimizer step
and halves its scale, the other ranks step and keep theirs.  From then on the ranks scale
their losses by different factors before the reduce-scatter and unscale with their own,
so the summed gradients are wrong, the overflowing shard keeps being skipped (its
parameters stay frozen) and the scales drift apart.  No error is raised; the run just
ends with a much higher loss.  With one process the single scaler sees every gradient,
skips the first few overflowing steps and trains normally.

Public sources
--------------
- pytorch/pytorch PR #76918 "[FSDP] Sharded Grad Scaler" (ShardedGradScaler all-reduces
  found_inf across ranks) and PR #115710 "[FSDP] sharded grad scaler: copy found_inf after
  waiting on async reduce_all" ("when rank 0 have inf grad, rank 1...k should get
  found_inf=1").
- facebookresearch/fairscale issue #180 "[OSS] Handle torch AMP auto skip inf/nan steps"
  (with sharded optimizer state "each rank will see a different step, meaning that some
  ranks could skip and others try to step").
- PyTorch docs, torch.distributed.fsdp.sharded_grad_scaler.ShardedGradScaler and the AMP
  examples note.

Fix
---
Use ``torch.distributed.fsdp.sharded_grad_scaler.ShardedGradScaler`` (it all-reduces the
found-inf flag so every rank skips together and keeps the same scale).
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.fsdp import FullStateDictConfig, MixedPrecision, StateDictType
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def make_data(n=2048, dim=16, seed=5):
    """Synthetic listings; the target is the price in units of $100k."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, generator=g)
    price = 3.0 + torch.tanh(x @ w / 4) + 0.1 * torch.randn(n, generator=g)
    return x, price.unsqueeze(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    args, _ = parser.parse_known_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    world_size = dist.get_world_size()
    torch.manual_seed(0)

    x, y = make_data()
    dataset = TensorDataset(x, y)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)

    model = nn.Sequential(nn.Linear(x.shape[1], 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 1))
    fp16 = MixedPrecision(param_dtype=torch.float16, reduce_dtype=torch.float16, buffer_dtype=torch.float16)
    fsdp_model = FSDP(model, device_id=torch.device("cpu"), mixed_precision=fp16)
    optimizer = torch.optim.SGD(fsdp_model.parameters(), lr=args.lr, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")  # dynamic loss scaling for fp16

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for step, (xb, yb) in enumerate(loader):
            optimizer.zero_grad()
            pred = fsdp_model(xb)
            loss = F.mse_loss(pred.float(), yb)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if rank == 0 and step % 4 == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f} scale={scaler.get_scale():.0f}", flush=True)

    cfg = FullStateDictConfig(offload_to_cpu=False, rank0_only=False)
    with FSDP.state_dict_type(fsdp_model, StateDictType.FULL_STATE_DICT, cfg):
        state = fsdp_model.state_dict()
    with torch.no_grad():
        full_mse = F.mse_loss(fsdp_model(x).float(), y).item()
    if rank == 0:
        print(f"final mse={full_mse:.4f}", flush=True)
        out_dir = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out_dir, exist_ok=True)
        torch.save(state, os.path.join(out_dir, "model.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
