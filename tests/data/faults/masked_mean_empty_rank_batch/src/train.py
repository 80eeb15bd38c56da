"""Defect detector + severity regressor whose masked loss turns NaN once the per-rank batch shrinks.

Every part gets a defect/no-defect label; only defective parts (about 12 %) have a
severity score, so the severity loss is a masked mean squared error,
sum(mask * err^2) / mask.sum(), over the defective rows of the batch.  The global
batch is kept at 64 and split over the ranks.  With one process a batch of 64
always contains defective parts.  With 2 hosts x 2 processes the per-rank batch is
16 and some ranks draw a batch with no defective part: the masked mean is 0/0 =
NaN and so is its gradient (mask / mask.sum() = 0 * inf), the NaN gradient goes
into DDP's all-reduce, and every replica's weights become NaN in the same step.
From then on rank 0 logs loss=nan on every step and saves a model full of NaNs;
exit code 0.

The symptom looks like an unstable optimisation (learning rate, precision, bad
data), while the cause is the per-rank mean over a possibly empty selection.

Public sources:
- pytorch/pytorch#50224 "Let loss_func(empty_inputs, reduction="mean") return 0":
  a mean over zero elements is nan in PyTorch (losses with reduction="mean" too).
- facebookresearch/maskrcnn-benchmark#841 "Get nan loss during training": fine on
  one GPU, NaN with 4 GPUs.
- JJBOY/BMN-Boundary-Matching-Network#23: NaN when a small batch has no positive
  sample in a masked loss term.
- open-mmlab/mmdetection#7116: return a zero (graph-connected) loss when a GPU's
  batch has no ground truth.

Fix: normalise the masked loss by a count that cannot be zero, e.g.
`((pred - sev) ** 2 * mask).sum() / mask.sum().clamp(min=1)`, or better by the
global number of defective rows in the step (all-reduced count, times world size
to undo DDP's averaging).
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

DIM = 10


def make_data(seed, n):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g)
    score = x[:, 0] + 0.8 * x[:, 1] - 0.6 * x[:, 2]
    defect = (score > 1.7).float()
    severity = torch.where(defect > 0, 1.0 + 0.7 * x[:, 3] - 0.4 * x[:, 4], torch.zeros(n))
    return x, defect.unsqueeze(1), severity.unsqueeze(1)


class Inspector(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(DIM, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU())
        self.defect = nn.Linear(48, 1)
        self.severity = nn.Linear(48, 1)

    def forward(self, x):
        h = self.body(x)
        return self.defect(h), self.severity(h)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64, help="global batch size")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(args.seed)

    x, d, s = make_data(1, 2048)
    ds = TensorDataset(x, d, s)
    sampler = DistributedSampler(ds, shuffle=True, seed=args.seed)
    loader = DataLoader(ds, batch_size=args.batch_size // world, sampler=sampler, drop_last=True)

    model = Inspector()
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=args.lr)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        ddp.train()
        for step, (xb, db, sb) in enumerate(loader):
            logit, sev = ddp(xb)
            det_loss = F.binary_cross_entropy_with_logits(logit, db)
            mask = db  # severity only exists for defective parts
            sev_loss = ((sev - sb) ** 2 * mask).sum() / mask.sum()
            loss = det_loss + sev_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            if rank == 0 and step % 4 == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)

    if rank == 0:
        xt, dt, st = make_data(2, 2048)
        model.eval()
        with torch.no_grad():
            logit, sev = model(xt)
            acc = ((logit > 0).float() == dt).float().mean().item()
            m = dt.squeeze(1) > 0
            sev_rmse = torch.sqrt(F.mse_loss(sev[m], st[m])).item()
        print(f"eval defect_acc={acc:.3f} severity_rmse={sev_rmse:.4f}", flush=True)
        out = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(out, "model.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
