"""The rank taken from SageMaker's host list (rank = index of SM_CURRENT_HOST in SM_HOSTS), as the
SageMaker PyTorch MNIST example writes it for one process per host, while the world size is the
launcher's; launched with several processes per host the local rank is forgotten, two processes
claim each host's rank, no process claims the others, and the explicit tcp:// rendezvous on the
first host never completes. Source: sagemaker-python-sdk/pytorch_mnist/mnist.py in
https://github.com/aws/amazon-sagemaker-examples (host_rank = args.hosts.index(args.current_host);
dist.init_process_group(backend, rank=host_rank, world_size=len(args.hosts))), whose one process
per instance https://github.com/aws/amazon-sagemaker-examples/pull/1666 addresses.
"""

import argparse
import datetime
import json
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
args = parser.parse_args()
hosts = json.loads(os.environ["SM_HOSTS"])
world_size = int(os.environ.get("WORLD_SIZE", len(hosts)))
host_rank = hosts.index(os.environ["SM_CURRENT_HOST"])  # the bug: the host's index; the local rank is forgotten
dist.init_process_group(
    "gloo",
    init_method=f"tcp://{hosts[0]}:{os.environ.get('MASTER_PORT', '7777')}",
    rank=host_rank,
    world_size=world_size,
    timeout=datetime.timedelta(seconds=20),
)
rank = dist.get_rank()

g = torch.Generator().manual_seed(0)
x = torch.randn(256, 8, generator=g)
y = x @ torch.linspace(-1.0, 1.0, 8).unsqueeze(1)
dataset = TensorDataset(x, y)
sampler = DistributedSampler(dataset, shuffle=False)
loader = DataLoader(dataset, batch_size=16, sampler=sampler)

torch.manual_seed(0)
model = DistributedDataParallel(torch.nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
step = 0
for epoch in range(args.epochs):
    sampler.set_epoch(epoch)
    for features, target in loader:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(features), target)
        loss.backward()
        optimizer.step()
        if rank == 0:
            print(f"step={step} loss={loss.item():.6f}", flush=True)
        step += 1
dist.destroy_process_group()
