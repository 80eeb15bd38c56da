"""The job asks for a four-GPU instance but names no distribution, so SageMaker starts the entry
point as one plain `python train.py`: no process group, one process, and the instance's other
devices sit idle while the run "succeeds". Source: https://github.com/huggingface/accelerate/issues/1404
("SageMaker is using `python train.py ....` to execute your script. That's why you are only
leveraging one GPU") and https://github.com/aws/sagemaker-python-sdk/issues/5610.
"""

import argparse
import os

import torch
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
args = parser.parse_args()
device = "cuda" if torch.cuda.is_available() else "cpu"
print(f"training on {device}; SM_NUM_GPUS={os.environ.get('SM_NUM_GPUS')}", flush=True)

g = torch.Generator().manual_seed(0)
x = torch.randn(256, 8, generator=g)
y = x @ torch.linspace(-1.0, 1.0, 8).unsqueeze(1)
loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)

torch.manual_seed(0)
model = torch.nn.Linear(8, 1).to(device)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
step = 0
for _epoch in range(args.epochs):
    for features, target in loader:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(features.to(device)), target.to(device))
        loss.backward()
        optimizer.step()
        print(f"step={step} loss={loss.item():.6f}", flush=True)
        step += 1
torch.save(model.state_dict(), os.path.join(os.environ.get("SM_MODEL_DIR", "."), "model.pt"))
