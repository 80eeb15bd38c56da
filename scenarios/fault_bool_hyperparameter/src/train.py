"""Single-process training whose --normalize flag is parsed with type=bool (a classic)."""

import argparse
import csv
import os

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--normalize", type=bool, default=False)
parser.add_argument("--learning-rate", type=float, default=0.01)
args = parser.parse_args()
torch.manual_seed(0)
with open(os.path.join(os.environ["SM_CHANNEL_TRAIN"], "train.csv")) as handle:
    data = torch.tensor([[float(x) for x in row] for row in csv.reader(handle)])
features, target = data[:, 1:], data[:, :1]
if args.normalize:
    features = (features - features.mean(0)) / features.std(0)
model = torch.nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate)
for step in range(args.epochs * 32):
    batch = slice((step % 32) * 32, (step % 32 + 1) * 32)
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(features[batch]), target[batch])
    loss.backward()
    optimizer.step()
    print(f"step={step} loss={loss.item():.6f}", flush=True)
torch.save(model.state_dict(), os.path.join(os.environ["SM_MODEL_DIR"], "model.pt"))
