"""Lightning DDP on CPU: the script launches its own ranks (Lightning re-runs this file with
LOCAL_RANK set), trains two epochs on a DataLoader and saves a checkpoint from rank 0."""

import argparse
import os

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


class Regression(L.LightningModule):
    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        features, target = batch
        loss = torch.nn.functional.mse_loss(self.layer(features), target)
        if self.global_rank == 0:
            print(f"step={self.global_step} loss={loss.item():.6f}", flush=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.1)
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    data = torch.arange(64, dtype=torch.float32).reshape(32, 2) / 64
    loader = DataLoader(TensorDataset(data[:, :1], data[:, 1:]), batch_size=4)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=args.epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    model = Regression(args.lr)
    trainer.fit(model, loader)
    trainer.save_checkpoint(os.path.join(os.environ["SM_MODEL_DIR"], "model.ckpt"), weights_only=True)
    if trainer.global_rank == 0:
        print("weights", [round(p.item(), 6) for p in model.parameters()], flush=True)


if __name__ == "__main__":
    main()
