"""The checkpoint is taken from the DistributedDataParallel wrapper instead of the wrapped module.
The script wraps the model in DDP only when it runs with more than one process, and saves
model.state_dict(). In one process that is the plain module's state dict; with several processes the
wrapper's state dict names every tensor "module.<name>", so the exported model.pt no longer matches
the model class and the export check (load into a fresh Regressor, as the inference container does)
fails with "Missing key(s) in state_dict: ... Unexpected key(s) in state_dict: module. ...". Sources:
pytorch/pytorch issue #41048 ("convenience function for loading a non-DP/DDP model from a DP/DDP
state_dict": "strip the `module` prefix from all items in the state dict", "a common user need"),
and the discuss.pytorch.org thread "[solved] KeyError: 'unexpected key "module.encoder.embedding.weight"
in state_dict'". The fix is to save model.module.state_dict() (or strip the prefix with
torch.nn.modules.utils.consume_prefix_in_state_dict_if_present).
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


class Regressor(torch.nn.Module):
    def __init__(self, d_in=8, hidden=32):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.Tanh())
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.body(x))


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size")
    parser.add_argument("--lr", type=float, default=0.1)
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
    model = Regressor()
    if world > 1:
        model = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

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
        path = os.path.join(model_dir, "model.pt")
        torch.save(model.state_dict(), path)  # the bug: the DDP wrapper's keys carry "module."
        # export check: load the artifact the way the inference container does
        served = Regressor()
        served.load_state_dict(torch.load(path))
        served.eval()
        with torch.no_grad():
            mse = torch.nn.functional.mse_loss(served(dataset.tensors[0]), dataset.tensors[1])
        print(f"export check: reloaded model mse={mse.item():.4f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
