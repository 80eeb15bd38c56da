"""Entry point: Lightning's LSTM demo model on random tokens in place of WikiText-2 (no download),
trained with strategy="ddp_spawn" on CPU. The demo's own SequenceSampler is a plain Sampler of
index lists, into which Lightning cannot inject a DistributedSampler (it raises): the blocks go
through a DataLoader that Lightning shards, whole batches only (the demo keeps its hidden state
from one batch to the next)."""

import argparse
import os

import lightning as L
import torch
from lightning.pytorch.demos.lstm import LightningLSTM
from torch.utils.data import DataLoader, Dataset


class RandomTokens(Dataset):
    """(input, target) blocks of a random token stream, as the demo's WikiText2 gives them."""

    def __init__(self, vocab: int, length: int = 2400, block: int = 16) -> None:
        generator = torch.Generator().manual_seed(1234)
        self.data = torch.randint(vocab, (length + 1,), generator=generator)
        self.block = block

    def __len__(self) -> int:
        return (len(self.data) - 1) // self.block

    def __getitem__(self, index: int):
        start = index * self.block
        return self.data[start : start + self.block], self.data[start + 1 : start + 1 + self.block]


class TokensLSTM(LightningLSTM):
    def __init__(self, vocab: int) -> None:
        super().__init__(vocab_size=vocab)
        self.vocab = vocab

    def prepare_data(self) -> None:  # the demo's downloads WikiText-2
        pass

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomTokens(self.vocab), batch_size=10, drop_last=True)


class PrintLoss(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == 0:
            print(f"step={trainer.global_step} loss={outputs['loss'].item():.6f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=64)
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_steps=args.steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[PrintLoss()],
    )
    model = TokensLSTM(args.vocab)
    trainer.fit(model)
    # ddp_spawn hands the trained weights back to this process
    torch.save(model.state_dict(), os.path.join(os.environ["SM_MODEL_DIR"], "lstm.pt"))
    print("saved", sum(p.numel() for p in model.parameters()), "parameters", flush=True)


if __name__ == "__main__":
    main()
