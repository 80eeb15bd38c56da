"""Entry point: Lightning's Transformer demo model on random tokens in place of WikiText-2 (no
download), trained under torchrun by a Trainer that takes the ranks torchrun started."""

import argparse
import os

import lightning as L
import torch
from lightning.pytorch.demos.transformer import LightningTransformer
from torch.utils.data import DataLoader, Dataset


class RandomTokens(Dataset):
    """(input, target) blocks of a random token stream, as the demo's WikiText2 gives them."""

    def __init__(self, vocab: int, length: int = 2048, block: int = 16) -> None:
        generator = torch.Generator().manual_seed(1234)
        self.data = torch.randint(vocab, (length + 1,), generator=generator)
        self.block = block

    def __len__(self) -> int:
        return (len(self.data) - 1) // self.block

    def __getitem__(self, index: int):
        start = index * self.block
        return self.data[start : start + self.block], self.data[start + 1 : start + 1 + self.block]


class TokensTransformer(LightningTransformer):
    def prepare_data(self) -> None:  # the demo's downloads WikiText-2
        pass


class PrintLoss(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == 0:
            print(f"step={trainer.global_step} loss={outputs['loss'].item():.6f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=128)
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=int(os.environ["LOCAL_WORLD_SIZE"]),
        num_nodes=int(os.environ["WORLD_SIZE"]) // int(os.environ["LOCAL_WORLD_SIZE"]),
        strategy="ddp",
        max_steps=args.steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[PrintLoss()],
    )
    model = TokensTransformer(vocab_size=args.vocab)
    trainer.fit(model, DataLoader(RandomTokens(args.vocab), batch_size=8))
    trainer.save_checkpoint(os.path.join(os.environ["SM_MODEL_DIR"], "transformer.ckpt"), weights_only=True)


if __name__ == "__main__":
    main()
