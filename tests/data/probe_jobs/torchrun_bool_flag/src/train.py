"""A torchrun job whose boolean hyperparameter is parsed with type=bool: '--normalize False'
becomes True on every rank. torchrun's own parser runs first, in another process."""

import argparse

import torch
import torch.distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--normalize", type=bool, default=False)
args = parser.parse_args()
dist.init_process_group("gloo")
value = torch.tensor([float(args.normalize)])
dist.all_reduce(value)
if dist.get_rank() == 0:
    print(f"normalize={args.normalize} on {int(value.item())} ranks", flush=True)
dist.destroy_process_group()
