"""Topic classifier over short texts; the word vocabulary is built once, on rank 0.

What goes wrong
---------------
Counting the corpus and building the word -> id vocabulary is done on rank 0
only, and the result is meant to reach the other ranks through
``dist.broadcast_object_list``.  That collective works *in place on the list it
is given*: on the receiving ranks it replaces the list's elements with rank 0's
objects.  The script passes a temporary list literal, ``[vocab]``, and keeps
using its own ``vocab`` variable afterwards, so the received vocabulary is thrown
away with the temporary list.  Ranks 1..N-1 keep their placeholder vocabulary,
which holds only ``<pad>`` and ``<unk>``, and encode every word of their shard
as ``<unk>``.  The embedding table has a fixed size (``--vocab-size``), so all
replicas have the same shapes and DDP starts and trains without complaint: three
of the four ranks feed constant all-<unk> inputs, their gradients only teach the
model the class prior, and the word embeddings get a quarter of the signal.
Rank 0's logged loss looks normal because rank 0 does have the real vocabulary.
With one process, rank 0 is the only rank and everything is consistent.

Public sources
--------------
* pytorch/pytorch issue #56142 "torch.distributed.broadcast_object_list doesn't
  broadcast custom class object" - the reporter passed ``[dummy]`` and kept
  reading ``dummy``; the answer is that the list itself is updated in place.
  https://github.com/pytorch/pytorch/issues/56142
* pytorch/pytorch PR #43887 "broadcast_object API for c10d": "The input is a list
  of objects ... it is in place, meaning all ranks part of the group will have
  their input list modified to contain the broadcasted objects from the src
  rank." https://github.com/pytorch/pytorch/pull/43887
* torch.distributed.broadcast_object_list documentation.

Fix
---
Keep a reference to the list and read the result back from it::

    holder = [vocab]
    dist.broadcast_object_list(holder, src=0)
    vocab = holder[0]
"""

import argparse
import os
from collections import Counter

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

N_TOPICS, N_WORDS, TEXT_LEN = 4, 1500, 12
PAD, UNK = "<pad>", "<unk>"


def make_lexicon():
    g = torch.Generator().manual_seed(7)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = set()
    while len(words) < N_WORDS:
        n = int(torch.randint(3, 8, (1,), generator=g))
        words.add("".join(letters[int(i)] for i in torch.randint(0, 26, (n,), generator=g)))
    return sorted(words)


def make_corpus(n, seed, lexicon):
    # Each topic prefers its own 1/4 of the lexicon; texts mix topic words with general words.
    g = torch.Generator().manual_seed(seed)
    topics = torch.randint(0, N_TOPICS, (n,), generator=g)
    texts = []
    for t in topics.tolist():
        own = torch.randint(0, N_WORDS // N_TOPICS, (TEXT_LEN // 3,), generator=g) + t * (N_WORDS // N_TOPICS)
        other = torch.randint(0, N_WORDS, (TEXT_LEN - TEXT_LEN // 3,), generator=g)
        order = torch.randperm(TEXT_LEN, generator=g)
        ids = torch.cat([own, other])[order]
        texts.append(" ".join(lexicon[i] for i in ids.tolist()))
    return texts, topics


def build_vocab(texts, max_size):
    counts = Counter(w for text in texts for w in text.split())
    vocab = {PAD: 0, UNK: 1}
    for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: max_size - 2]:
        vocab[w] = len(vocab)
    return vocab


def encode(texts, vocab):
    return torch.tensor([[vocab.get(w, vocab[UNK]) for w in t.split()] for t in texts])


class TopicModel(nn.Module):
    def __init__(self, vocab_size, dim=48):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.head = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, N_TOPICS))

    def forward(self, ids):
        return self.head(self.embed(ids).mean(1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--global-batch-size", type=int, default=64)
    p.add_argument("--vocab-size", type=int, default=2000)
    p.add_argument("--lr", type=float, default=5e-3)
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    lexicon = make_lexicon()
    train_texts, train_y = make_corpus(4096, 0, lexicon)
    val_texts, val_y = make_corpus(1024, 1, lexicon)

    # Counting the corpus is the slow part on the real data set: do it once and share it.
    vocab = {PAD: 0, UNK: 1}
    if rank == 0:
        vocab = build_vocab(train_texts, args.vocab_size)
        print(f"vocab size {len(vocab)}", flush=True)
    dist.broadcast_object_list([vocab], src=0)

    train_ds = TensorDataset(encode(train_texts, vocab), train_y)
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(train_ds, batch_size=args.global_batch_size // world, sampler=sampler)

    torch.manual_seed(0)
    model = TopicModel(args.vocab_size)
    ddp = DDP(model)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        ddp.train()
        for step, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            loss = loss_fn(ddp(x), y)
            loss.backward()
            optimizer.step()
            if rank == 0 and step % 16 == 0:
                print(f"epoch={epoch} step={step} loss={loss.item():.4f}", flush=True)
        if rank == 0:
            model.eval()
            with torch.no_grad():
                logits = model(encode(val_texts, vocab))
            print(
                f"epoch={epoch} val_loss={loss_fn(logits, val_y).item():.4f} "
                f"val_acc={(logits.argmax(1) == val_y).float().mean().item():.4f}",
                flush=True,
            )

    if rank == 0:
        out = os.environ.get("SM_MODEL_DIR", "/tmp/m")
        os.makedirs(out, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(out, "model.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
