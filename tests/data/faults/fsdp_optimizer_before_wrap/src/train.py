"""Tabular regressor sharded with FSDP when the job has more than one process.

What goes wrong
---------------
The optimizer is built from ``model.parameters()`` while the model is still a
plain ``nn.Module``; the model is wrapped in ``FullyShardedDataParallel`` only
afterwards (and only when the world size is above one). FSDP (with the default
``use_orig_params=False``) flattens and shards the original parameters into its
own ``FlatParameter``s, so the tensors the optimizer holds are no longer the
ones used in forward/backward. They never receive a ``.grad``; ``AdamW.step()``
silently skips them and the sharded weights are never updated. At one process
the model is not wrapped and trains normally; on a 2x2 job the loss stays at its
initial value for the whole run and the saved model is the random init. No error
or warning is raised.

Public sources
--------------
* PyTorch FSDP docs (torch.distributed.fsdp.FullyShardedDataParallel): "the
  optimizer must be initialized after the module has been wrapped with FSDP".
* intelligent-machine-learning/dlrover issue #584 "When using FSDP on the nanoGPT
  model, the loss does not decrease" (fixed in PR #585 by moving the optimizer
  creation after the FSDP wrap).
* Lightning-AI/pytorch-lightning PR #15301 "Added a check to validate that wrapped
  FSDP models are used while initializing optimizers"; rasbt/cvpr2023 issue #10
  ("The optimizer does not seem to reference any FSDP parameters").
* huggingface/accelerate issue #2665 "FSDP Model not learning during training,
  loss stays constant".

Fix
---
Wrap first, then build the optimizer from the wrapped module's parameters:
``model = FSDP(model, ...); optimizer = AdamW(model.parameters(), ...)``.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.fsdp import FullStateDictConfig, StateDictType
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def make_data(n=2048, d=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g)
    y = torch.tanh(x @ w) + 0.1 * x[:, :1] ** 2 + 0.05 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def build_model(d=16):
    return nn.Sequential(nn.Linear(d, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)

    ds = make_data()
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(ds, batch_size=args.batch_size, sampler=sampler)

    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    if world > 1:
        # shard parameters, gradients and optimizer state across the ranks
        model = FSDP(model, device_id=torch.device("cpu"))

    loss_fn = nn.MSELoss()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        for step, (x, y) in enumerate(loader):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            if rank == 0 and step % 8 == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)

    if isinstance(model, FSDP):
        cfg = FullStateDictConfig(offload_to_cpu=False, rank0_only=False)
        with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, cfg):
            state = model.state_dict()
    else:
        state = model.state_dict()
    if rank == 0:
        out = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out, exist_ok=True)
        torch.save(state, os.path.join(out, "model.pt"))
        print("saved", os.path.join(out, "model.pt"), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
