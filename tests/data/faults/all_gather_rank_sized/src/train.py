"""To compute a global ranking metric each rank all-gathers the scores of its shard's positive
examples, a tensor whose length depends on the rank's data, into buffers shaped like its own:
all_gather needs the same size on every rank (the Gloo backend enforces it), so the sizes no
longer match across ranks and the collective errors or hangs. Source:
https://github.com/pytorch/pytorch/issues/156627 (Gloo's all_gather requires equally sized
tensors) and https://github.com/pytorch/pytorch/issues/70985.
"""

import argparse

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
args = parser.parse_args()
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()

g = torch.Generator().manual_seed(0)
x = torch.randn(256, 8, generator=g)
y = (x @ torch.linspace(-1.0, 1.0, 8) + 0.5 * torch.randn(256, generator=g) > 0).float()
dataset = TensorDataset(x, y)
sampler = DistributedSampler(dataset, shuffle=False)
loader = DataLoader(dataset, batch_size=16, sampler=sampler)

torch.manual_seed(0)
model = DistributedDataParallel(torch.nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
step = 0
for epoch in range(args.epochs):
    sampler.set_epoch(epoch)
    positive_scores = []
    for features, labels in loader:
        optimizer.zero_grad()
        logits = model(features).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        loss.backward()
        optimizer.step()
        positive_scores.append(logits.detach()[labels == 1])
        if rank == 0:
            print(f"step={step} loss={loss.item():.6f}", flush=True)
        step += 1
    mine = torch.cat(positive_scores)  # its length is this shard's number of positives
    # The bug: every rank sizes the buffers after its own tensor.
    gathered = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    if rank == 0:
        scores = torch.cat(gathered)
        print(f"epoch={epoch} positives={scores.numel()} mean_positive_score={scores.mean().item():.6f}", flush=True)
dist.destroy_process_group()
