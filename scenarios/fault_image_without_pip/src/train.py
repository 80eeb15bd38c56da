"""A tiny job that runs fine on any image with python3 and torch."""

import argparse

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=4)
args = parser.parse_args()
torch.manual_seed(0)
weight = torch.zeros(3, requires_grad=True)
optimizer = torch.optim.SGD([weight], lr=0.1)
for step in range(args.steps):
    optimizer.zero_grad()
    loss = ((weight - torch.tensor([1.0, -2.0, 0.5])) ** 2).sum()
    loss.backward()
    optimizer.step()
    print(f"step={step} loss={loss.item():.6f}", flush=True)
