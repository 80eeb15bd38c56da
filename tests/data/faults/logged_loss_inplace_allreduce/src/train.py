"""Two-task model (RMSE regression + BCE classification) whose loss logging corrupts the RMSE gradient.

For the progress line the script averages each task's loss over the workers:
`v = value.detach(); dist.all_reduce(v); running += v.item() / world`, and it does
this right after the forward pass, before backward().  Tensor.detach() returns a
tensor that shares storage with the original and dist.all_reduce works in place,
so the all-reduce overwrites the RMSE tensor itself with the SUM of the workers'
RMSEs.  torch.sqrt saves its output for the backward pass (d sqrt(u) = du / (2
sqrt(u))), and no version-counter error is raised for the c10d in-place write, so
backward() silently divides the regression gradient by the summed RMSE instead of
this rank's RMSE: about world_size times too small.  The BCE term saves no output
and is unaffected.

With one process the all-reduce is an identity and the model trains as intended.
With 2 hosts x 2 processes the regression head gets ~1/4 of its gradient while the
classification head gets all of it, so the task balance shifts with the world size
and the regression error ends up much worse; the logged losses look plausible.

Public sources:
- torch.Tensor.detach docs: "Returned Tensor shares the same storage with the
  original one. In-place modifications on either of them will be seen".
- eole-nlp/eole PR #116 "restore all_reduce directly but with detach.clone first"
  (fix for #115) and NVIDIA/Megatron-LM PR #97 (torch.distributed.all_reduce
  operates in place on its input).
- facebookresearch/maskrcnn-benchmark#84 "Reduce the training loss": the loss is
  reduced across processes for logging only.

Fix: reduce a copy (`v = value.detach().clone()`), or log after backward(), or
stack the scalars into a fresh tensor before the all-reduce.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

DIM = 12


def make_data(seed, n):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g)
    w = torch.linspace(-1.0, 1.0, DIM)
    target = 3.0 * torch.tanh(x @ w) + x[:, 2] * x[:, 3] + 0.1 * torch.randn(n, generator=g)
    label = ((x[:, 0] + x[:, 1] - x[:, 4]) > 0).float()
    return x, target.unsqueeze(1), label.unsqueeze(1)


class TwoHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.reg = nn.Linear(64, 1)
        self.cls = nn.Linear(64, 1)

    def forward(self, x):
        h = self.body(x)
        return self.reg(h), self.cls(h)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64, help="global batch size")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(args.seed)

    x, t, c = make_data(1, 4096)
    ds = TensorDataset(x, t, c)
    sampler = DistributedSampler(ds, shuffle=True, seed=args.seed)
    loader = DataLoader(ds, batch_size=args.batch_size // world, sampler=sampler, drop_last=True)

    model = TwoHead()
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        ddp.train()
        running = {"rmse": 0.0, "bce": 0.0}
        for step, (xb, tb, cb) in enumerate(loader):
            reg_out, cls_out = ddp(xb)
            rmse = torch.sqrt(F.mse_loss(reg_out, tb))
            bce = F.binary_cross_entropy_with_logits(cls_out, cb)
            loss = rmse + bce

            # running averages over all workers for the progress line
            for name, value in (("rmse", rmse), ("bce", bce)):
                v = value.detach()
                dist.all_reduce(v)
                running[name] += v.item() / world

            opt.zero_grad()
            loss.backward()
            opt.step()
            if rank == 0 and (step + 1) % 16 == 0:
                avg = (running["rmse"] + running["bce"]) / (step + 1)
                print(
                    f"epoch={epoch} step={step + 1} loss={avg:.4f} "
                    f"rmse={running['rmse'] / (step + 1):.4f} bce={running['bce'] / (step + 1):.4f}",
                    flush=True,
                )

    if rank == 0:
        xt, tt, ct = make_data(2, 2048)
        model.eval()
        with torch.no_grad():
            r, logits = model(xt)
            test_rmse = torch.sqrt(F.mse_loss(r, tt)).item()
            test_acc = ((logits > 0).float() == ct).float().mean().item()
        print(f"eval test_rmse={test_rmse:.4f} test_acc={test_acc:.3f}", flush=True)
        out = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(out, "model.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
