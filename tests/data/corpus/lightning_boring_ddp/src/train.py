"""Entry point: Lightning's BoringModel and RandomDataset, trained with its Trainer on CPU DDP
(Lightning starts the second rank itself); the model and data are Lightning's own."""

import argparse
import os

import lightning as L
from lightning.pytorch.demos.boring_classes import BoringModel


class PrintLoss(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == 0:
            print(f"step={trainer.global_step} loss={outputs['loss'].item():.6f}", flush=True)


parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
args = parser.parse_args()
L.seed_everything(0, verbose=False)
trainer = L.Trainer(
    accelerator="cpu",
    devices=2,
    strategy="ddp",
    max_epochs=args.epochs,
    limit_train_batches=8,
    limit_val_batches=2,
    logger=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    enable_checkpointing=False,
    callbacks=[PrintLoss()],
)
model = BoringModel()
trainer.fit(model)
trainer.save_checkpoint(os.path.join(os.environ["SM_MODEL_DIR"], "boring.ckpt"), weights_only=True)
