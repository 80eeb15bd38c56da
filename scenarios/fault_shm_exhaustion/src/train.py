"""Regress an image's mean brightness from its pooled colour channels, with a worker DataLoader.

Each sample is a 3x1024x2048 float32 image (24 MiB), so a batch of 4 is 96 MiB. PyTorch's
DataLoader workers collate every batch straight into shared memory (/dev/shm) and hand it to
the trainer through a queue; with 2 workers and the default prefetch of 2, up to four batches
are in flight. A training instance has room for that; Docker's default 64 MB /dev/shm does not
even hold one batch, and the first batch fails with "No space left on device" or a Bus error.
"""

import argparse
import os

import torch
from torch.utils.data import DataLoader, Dataset


class Images(Dataset):
    """Synthetic images, the same for a given index in every run."""

    def __init__(self, count: int, shape: tuple[int, int, int] = (3, 1024, 2048)) -> None:
        self.count, self.shape = count, shape

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.rand(self.shape, generator=torch.Generator().manual_seed(index))
        return image, image.mean().reshape(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    loader = DataLoader(
        Images(args.batches * args.batch_size), batch_size=args.batch_size, num_workers=args.num_workers
    )
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for step, (images, target) in enumerate(loader):
        mb = images.element_size() * images.nelement() / 2**20
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(images.mean(dim=(2, 3))), target)
        loss.backward()
        optimizer.step()
        print(f"step={step} batch_mib={mb:.0f} loss={loss.item():.6f}", flush=True)
    torch.save(model.state_dict(), os.path.join(os.environ["SM_MODEL_DIR"], "model.pt"))


if __name__ == "__main__":
    main()
