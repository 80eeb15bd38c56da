"""Entry point: started alone, it runs itself again under ``python -m torch.distributed.run``
with 2 processes; as a rank, Lightning Fabric (DDP on CPU) trains Lightning's demo network on
random 28x28 images, and rank 0 saves it through Fabric."""

import argparse
import os
import subprocess
import sys

if "LOCAL_RANK" not in os.environ:  # the launcher: this process is not a rank
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    sys.exit(subprocess.call([*command, os.path.abspath(__file__), *sys.argv[1:]]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from lightning.fabric import Fabric  # noqa: E402
from lightning.pytorch.demos.boring_classes import Net  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=8)
parser.add_argument("--lr", type=float, default=0.05)
args = parser.parse_args()

fabric = Fabric(accelerator="cpu", devices=int(os.environ["LOCAL_WORLD_SIZE"]), strategy="ddp")
fabric.launch()
fabric.seed_everything(0, verbose=False)
generator = torch.Generator().manual_seed(7)
images = torch.randn(args.steps * 2 * 8, 1, 28, 28, generator=generator)
labels = torch.randint(10, (len(images),), generator=generator)
loader = fabric.setup_dataloaders(DataLoader(TensorDataset(images, labels), batch_size=8))
net = Net()
model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=args.lr))
model.train()
for step, (x, y) in enumerate(loader):
    optimizer.zero_grad()
    loss = F.nll_loss(model(x), y)
    fabric.backward(loss)
    optimizer.step()
    mean = fabric.all_reduce(loss.detach(), reduce_op="mean")
    fabric.print(f"step={step} loss={mean.item():.6f}")
fabric.save(os.path.join(os.environ["SM_MODEL_DIR"], "net.ckpt"), {"model": model, "step": args.steps})
fabric.barrier()
