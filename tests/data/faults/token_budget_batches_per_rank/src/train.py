"""Dynamic (token-budget) batching applied per rank after DistributedSampler. To cut padding, the
script groups each rank's samples into batches holding at most ``--max-tokens`` padded tokens
(a batch of short sequences holds many samples, a batch of long ones few). DistributedSampler
gives every rank the same number of samples, but not the same sequence lengths, so the number of
batches each rank builds from its shard differs. Every DDP backward is a collective: the rank with
more batches runs extra backward passes whose gradient all-reduce no other rank joins (at the end
of the epoch they are already in the next epoch, or have left the loop), so the collectives pair up
wrongly and the job errors or hangs. In one process there is a single shard and a single batch
count, and the job runs. Source: huggingface/accelerate issue #207, "Support of Dynamic Batching
(varying batch size BatchSampler)" ("It works with a single GPU, but not with multiple GPUs");
huggingface/transformers PR #7030 ("dynamic batch sampler is still experimental. Distributed
doesn't work"); PyTorch tutorial "Distributed Training with Uneven Inputs Using the Join Context
Manager" ("if a rank has fewer inputs, then the other ranks will hang or error"). The fix is to
plan the batches globally and hand every rank the same number of them (or use ``model.join()``).
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=256, help="padded tokens per batch")
    parser.add_argument("--lr", type=float, default=0.05)
    return parser.parse_args()


class ReviewDataset(Dataset):
    """Synthetic token sequences of very different lengths with a scalar score to regress."""

    def __init__(self, n=384, vocab=64, max_len=48):
        g = torch.Generator().manual_seed(0)
        self.lengths = torch.randint(2, max_len + 1, (n,), generator=g).tolist()
        token_weight = torch.randn(vocab, generator=g)
        self.samples = []
        for length in self.lengths:
            tokens = torch.randint(0, vocab, (length,), generator=g)
            score = torch.tanh(token_weight[tokens].mean() * 3).reshape(1)
            self.samples.append((tokens, score))

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]


class TokenBudgetBatchSampler(Sampler):
    """Groups the indices of an index sampler into batches of at most max_tokens padded tokens."""

    def __init__(self, sampler, lengths, max_tokens):
        self.sampler, self.lengths, self.max_tokens = sampler, lengths, max_tokens

    def __iter__(self):
        batch, longest = [], 0
        for index in self.sampler:
            length = self.lengths[index]
            if batch and max(longest, length) * (len(batch) + 1) > self.max_tokens:
                yield batch
                batch, longest = [], 0
            batch.append(index)
            longest = max(longest, length)
        if batch:
            yield batch

    def __len__(self):
        return sum(1 for _ in self.__iter__())


def collate(samples):
    tokens = [tokens for tokens, _ in samples]
    offsets = torch.tensor([0] + [len(t) for t in tokens[:-1]]).cumsum(0)
    return torch.cat(tokens), offsets, torch.stack([score for _, score in samples])


class BagRegressor(torch.nn.Module):
    def __init__(self, vocab=64, dim=16):
        super().__init__()
        self.embed = torch.nn.EmbeddingBag(vocab, dim, mode="mean")
        self.head = torch.nn.Sequential(torch.nn.Linear(dim, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def forward(self, tokens, offsets):
        return self.head(self.embed(tokens, offsets))


def main():
    args = parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()

    dataset = ReviewDataset()
    sampler = DistributedSampler(dataset, shuffle=True, seed=0)
    batch_sampler = TokenBudgetBatchSampler(sampler, dataset.lengths, args.max_tokens)
    loader = DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate)

    torch.manual_seed(0)
    model = DistributedDataParallel(BagRegressor())
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for step, (tokens, offsets, target) in enumerate(loader):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(tokens, offsets), target)
            loss.backward()
            optimizer.step()
            if rank == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)

    if rank == 0:
        model_dir = os.environ.get("SM_MODEL_DIR", "/tmp/model_out")
        os.makedirs(model_dir, exist_ok=True)
        torch.save(model.module.state_dict(), os.path.join(model_dir, "model.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
