"""Binary tabular classifier with exact mid-epoch resume (DDP, spot instances).

What the job is
---------------
A small MLP (binary churn-style classifier on synthetic data) trained with
DistributedDataParallel (gloo, CPU) on interruptible capacity. Epochs are long
in production, so the job checkpoints every few optimizer steps and, when it
is restarted, continues *in the middle of the epoch* exactly where it stopped:
model, optimizer (momentum) and the data-sampler position are all part of the
checkpoint. The sampler is a ``DistributedSampler`` subclass that remembers
which indices of the current epoch it has not handed out yet and can be
restored from a ``state_dict``.

Checkpoints go to a node-local directory (``$SM_OUTPUT_DATA_DIR/checkpoints``),
so local rank 0 of every host writes a copy and every rank reads the copy on
its own host. To exercise the resume path on every run, the script is
"preempted" a few steps into the last epoch (right after a checkpoint),
builds everything afresh, resumes and finishes training. Rank 0 writes the final model to
``$SM_MODEL_DIR/model.pt``.

What goes wrong
---------------
Model and optimizer state are replicated under DDP, so taking them from the
saving rank is fine. The sampler state is not: it is *per rank* (rank r owns
the indices ``perm[r::world_size]``). The checkpoint stores only the saving
rank's ``sampler.state_dict()`` and on resume every rank calls
``sampler.load_state_dict(ckpt["sampler"])``. Local rank 1 on each host
therefore continues with local rank 0's remaining indices: after the restart
ranks 0 and 1 train on the same samples, ranks 2 and 3 on the same samples,
and half of the remaining epoch is never seen. Nothing crashes - every rank
still has the same number of batches - but the resumed steps average
duplicated gradients, so the loss curve and final weights differ from the
single-process run (where rank 0's state is the only state and resume is
exact).

Public sources
--------------
* pytorch/torchtitan issue #291 "Make dataloader stateful?": on resume "all
  ranks receiving the same state_dict of dataloader" because "if it is not
  DTensor, only rank 0's value is saved"; the fix saves the dataloader state
  per data-parallel rank.
* pytorch/torchtitan issue #409 "DataLoader state is empty for different
  ranks?" - the fixed format keys the dataloader state by ``dp_rank_{i}``.
* huggingface/accelerate issue #3938 "DataLoaderShard with StatefulDataLoader
  produces wrong state dict in DDP" - wrong per-rank loader state "causes data
  duplication when resuming training from a saved checkpoint".

Fix
---
Save per-rank state per rank: e.g. ``dist.all_gather_object`` the sampler
states into the checkpoint keyed by global rank (or write
``sampler_rank{rank}.pt`` from every rank) and have each rank restore its own
entry.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

N_SAMPLES = 512
N_FEATURES = 16
GLOBAL_BATCH = 32
CKPT_EVERY = 4
LR = 0.05


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    return p.parse_args()


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler that can continue in the middle of an epoch.

    It remembers the indices of the current epoch that it has not handed out
    yet, so a restarted job sees exactly the samples the interrupted one had
    not trained on.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._order = []
        self._served = 0
        self._resume_order = None

    def __iter__(self):
        if self._resume_order is not None:
            self._order, self._resume_order = self._resume_order, None
        else:
            self._order = list(super().__iter__())
        self._served = 0
        for idx in self._order:
            self._served += 1
            yield idx

    def __len__(self):
        if self._resume_order is not None:
            return len(self._resume_order)
        return super().__len__()

    def state_dict(self):
        return {"epoch": self.epoch, "pending": list(self._order[self._served :])}

    def load_state_dict(self, state):
        self.epoch = state["epoch"]
        self._resume_order = list(state["pending"])


def make_dataset():
    g = torch.Generator().manual_seed(77)
    x = torch.randn(N_SAMPLES, N_FEATURES, generator=g)
    w = torch.randn(N_FEATURES, generator=g)
    logits = x @ w + 0.8 * x[:, 0] * x[:, 1] - 0.5 * x[:, 2] ** 2
    y = (logits + 0.3 * torch.randn(N_SAMPLES, generator=g) > 0).float().unsqueeze(1)
    return TensorDataset(x, y)


def build_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(N_FEATURES, 32), nn.ReLU(), nn.Linear(32, 1))


def global_mean(value, world_size):
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / world_size


def setup(rank, world_size, dataset):
    model = build_model()
    sampler = ResumableDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=GLOBAL_BATCH // world_size, sampler=sampler)
    return model, sampler, loader


def train(ddp_model, optimizer, sampler, loader, state, args, ckpt_path, rank, local_rank, world_size, stop_at=None):
    """Runs from state (epoch, step_in_epoch, global_step); returns True if preempted."""
    loss_fn = nn.BCEWithLogitsLoss()
    epoch, step_in_epoch, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
    while epoch < args.epochs:
        if step_in_epoch == 0:
            sampler.set_epoch(epoch)
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(ddp_model(x), y)
            loss.backward()
            optimizer.step()
            avg = global_mean(loss.item(), world_size)
            if rank == 0:
                print(f"epoch={epoch} step={step_in_epoch} loss={avg:.4f}", flush=True)
            step_in_epoch += 1
            global_step += 1
            if global_step % CKPT_EVERY == 0:
                # node-local checkpoint dir: one copy per host, written by local rank 0
                if local_rank == 0:
                    torch.save(
                        {
                            "model": ddp_model.module.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "epoch": epoch,
                            "step_in_epoch": step_in_epoch,
                            "global_step": global_step,
                            "sampler": sampler.state_dict(),
                        },
                        ckpt_path,
                    )
                dist.barrier()
                if stop_at is not None and global_step >= stop_at:
                    if rank == 0:
                        print(
                            f"simulated preemption at epoch={epoch} step={step_in_epoch} global_step={global_step}",
                            flush=True,
                        )
                    return True
        epoch += 1
        step_in_epoch = 0
    return False


def main():
    args = parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    world_size = dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    assert GLOBAL_BATCH % world_size == 0

    out_dir = os.environ.get("SM_OUTPUT_DATA_DIR", "/tmp/out")
    model_dir = os.environ.get("SM_MODEL_DIR", "/tmp/model_out")
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    ckpt_path = os.path.join(ckpt_dir, "last.pt")
    if local_rank == 0:
        os.makedirs(ckpt_dir, exist_ok=True)
    if rank == 0:
        os.makedirs(model_dir, exist_ok=True)

    dataset = make_dataset()
    steps_per_epoch = N_SAMPLES // GLOBAL_BATCH
    total_steps = steps_per_epoch * args.epochs
    # preempted early in the last epoch, right after a checkpoint
    preempt_at = total_steps - steps_per_epoch + CKPT_EVERY

    # ---- attempt 1: preempted mid-epoch, right after a checkpoint ----
    model, sampler, loader = setup(rank, world_size, dataset)
    ddp_model = DDP(model)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=LR, momentum=0.9)
    fresh = {"epoch": 0, "step_in_epoch": 0, "global_step": 0}
    preempted = train(
        ddp_model, optimizer, sampler, loader, fresh, args, ckpt_path, rank, local_rank, world_size, stop_at=preempt_at
    )

    if preempted:
        del ddp_model, model, optimizer, sampler, loader
        # ---- attempt 2: restart and continue mid-epoch from the host-local checkpoint ----
        model, sampler, loader = setup(rank, world_size, dataset)
        ckpt = torch.load(ckpt_path, map_location="cpu")
        model.load_state_dict(ckpt["model"])
        ddp_model = DDP(model)
        optimizer = torch.optim.SGD(ddp_model.parameters(), lr=LR, momentum=0.9)
        optimizer.load_state_dict(ckpt["optimizer"])
        sampler.load_state_dict(ckpt["sampler"])
        state = {k: ckpt[k] for k in ("epoch", "step_in_epoch", "global_step")}
        if rank == 0:
            print(
                f"resuming at epoch={state['epoch']} step={state['step_in_epoch']} "
                f"({len(ckpt['sampler']['pending'])} samples left in this epoch on this rank)",
                flush=True,
            )
        train(ddp_model, optimizer, sampler, loader, state, args, ckpt_path, rank, local_rank, world_size)

    if rank == 0:
        final = ddp_model.module
        with torch.no_grad():
            x, y = dataset.tensors
            logits = final(x)
            final_loss = nn.functional.binary_cross_entropy_with_logits(logits, y).item()
            acc = ((logits > 0).float() == y).float().mean().item()
            checksum = sum(p.double().sum().item() for p in final.parameters())
        print(f"final_loss={final_loss:.6f} accuracy={acc:.4f} weight_checksum={checksum:.6f}", flush=True)
        torch.save(final.state_dict(), os.path.join(model_dir, "model.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
