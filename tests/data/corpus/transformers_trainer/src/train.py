"""Entry point: transformers' Trainer, TrainingArguments and a GPT-2 language model made from a
small GPT2Config (nothing downloaded), trained on random token blocks, saved with save_model.
The loss is printed by a callback of this file, in place of the Trainer's own printer, whose last
line is the run's wall time (different on every run, so no two logs would be alike)."""

import argparse
import os

import torch
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback


class RandomTokens(Dataset):
    def __init__(self, vocab: int, rows: int = 64, block: int = 16) -> None:
        generator = torch.Generator().manual_seed(1234)
        self.ids = torch.randint(vocab, (rows, block), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


class PrintLoss(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "loss" in logs:
            print(f"step={state.global_step} loss={logs['loss']:.6f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-steps", type=int, default=6)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    args = parser.parse_args()
    set_seed(0)
    config = GPT2Config(vocab_size=96, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    training = TrainingArguments(
        output_dir=os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "trainer"),
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=training, train_dataset=RandomTokens(config.vocab_size), callbacks=[PrintLoss()]
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    trainer.save_model(os.environ["SM_MODEL_DIR"])


if __name__ == "__main__":
    main()
