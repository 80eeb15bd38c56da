"""The vocabulary is built from the tokens this rank's sampler yields, so its size (the largest
token id seen, plus one) differs across ranks; DistributedDataParallel then finds parameters of
different shapes and refuses the model at construction ("DDP expects same model across all
ranks" / "appears not to match sizes of the same param in process 0"). Source: PyTorch's
parameter check in DDP's constructor, https://github.com/pytorch/pytorch/issues/73547 and
https://github.com/pytorch/pytorch/issues/76449 (the mismatch is reported on the non-zero ranks).
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
rank = dist.get_rank()

g = torch.Generator().manual_seed(0)
tokens = torch.randint(0, 40, (256, 6), generator=g)
tokens[5, 2] = 97  # a rare token: only the rank that gets row 5 sees it
target = (tokens.float().mean(dim=1, keepdim=True) - 20.0) / 10.0
dataset = TensorDataset(tokens, target)
sampler = DistributedSampler(dataset, shuffle=False)
loader = DataLoader(dataset, batch_size=16, sampler=sampler)

# The bug: the vocabulary comes from this rank's shard, not from the whole corpus.
vocab_size = max(int(batch.max()) for batch, _ in loader) + 1
print(f"rank {rank}: vocabulary of {vocab_size} tokens", flush=True)

torch.manual_seed(0)
model = DistributedDataParallel(
    torch.nn.Sequential(torch.nn.EmbeddingBag(vocab_size, 8, mode="mean"), torch.nn.Linear(8, 1))
)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
step = 0
for epoch in range(args.epochs):
    sampler.set_epoch(epoch)
    for batch, y in loader:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(batch), y)
        loss.backward()
        optimizer.step()
        if rank == 0:
            print(f"step={step} loss={loss.item():.6f}", flush=True)
        step += 1
dist.destroy_process_group()
