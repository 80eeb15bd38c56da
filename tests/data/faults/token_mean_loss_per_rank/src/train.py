"""Token-level loss averaged over each rank's own tokens. A tagger is trained on padded sequences
of very different lengths with ``cross_entropy(..., ignore_index=-100)``, whose default ``mean``
divides by the number of real (non-padding) tokens in the batch the rank holds. Under
DistributedDataParallel the ranks hold different numbers of real tokens, and DDP then averages the
per-rank gradients with equal weight: the update is the mean of four per-rank token means, not the
mean over all tokens of the global batch. Tokens on a rank with few tokens weigh several times
more than tokens on a rank with many, so the model trained on 2 x 2 processes is not the model one
process trains on the same global batches. Source: huggingface/transformers issue #34242, "Add
DDP token averaging for equivalent non-parallel training similar to #34191" ("DDP seems not fully
equivalent to non-parallel training"), fixed by PR #34373 (``average_tokens_across_devices``) and
issue #39392; same point in huggingface/transformers issue #608 ("when using multiple GPUs,
loss.mean() may have subtle bias"). The fix is to sum the token losses, all-reduce the token count
and scale by ``world_size / global_token_count`` so that DDP's averaging yields the global mean.
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

PAD = -100


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size")
    parser.add_argument("--lr", type=float, default=0.5)
    return parser.parse_args()


class TaggingDataset(Dataset):
    """Sequences of 1..40 tokens; each token's tag depends on the token and its left neighbour."""

    def __init__(self, n=384, vocab=32, tags=5, max_len=40):
        g = torch.Generator().manual_seed(0)
        table = torch.randint(0, tags, (vocab, vocab), generator=g)
        self.samples = []
        for _ in range(n):
            # mostly short sentences and a few long documents
            length = (
                int(torch.randint(1, 8, (1,), generator=g))
                if torch.rand(1, generator=g) < 0.7
                else int(torch.randint(8, max_len + 1, (1,), generator=g))
            )
            tokens = torch.randint(0, vocab, (length,), generator=g)
            previous = torch.cat([torch.zeros(1, dtype=torch.long), tokens[:-1]])
            self.samples.append((tokens, table[tokens, previous]))

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]


def collate(samples):
    longest = max(len(tokens) for tokens, _ in samples)
    tokens = torch.zeros(len(samples), longest, dtype=torch.long)
    tags = torch.full((len(samples), longest), PAD, dtype=torch.long)
    for i, (t, y) in enumerate(samples):
        tokens[i, : len(t)] = t
        tags[i, : len(y)] = y
    return tokens, tags


class Tagger(torch.nn.Module):
    def __init__(self, vocab=32, tags=5, dim=16):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.mix = torch.nn.Linear(2 * dim, 32)
        self.out = torch.nn.Linear(32, tags)

    def forward(self, tokens):
        e = self.embed(tokens)
        left = torch.nn.functional.pad(e, (0, 0, 1, 0))[:, :-1]
        return self.out(torch.tanh(self.mix(torch.cat([e, left], dim=-1))))


def main():
    args = parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    dataset = TaggingDataset()
    sampler = DistributedSampler(dataset, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch_size // world, sampler=sampler, collate_fn=collate)

    torch.manual_seed(0)
    model = DistributedDataParallel(Tagger())
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for step, (tokens, tags) in enumerate(loader):
            optimizer.zero_grad()
            logits = model(tokens)
            # the bug: mean over this rank's real tokens; DDP then averages the rank means
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), tags.reshape(-1), ignore_index=PAD
            )
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
