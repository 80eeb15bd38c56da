import os
import socket

import torch

host = os.environ.get("SM_CURRENT_HOST", "algo-1")
machine = os.environ.get("HOSTNAME") or socket.gethostname()
home = os.getenv("HOME", "/root")
verbose = "TRAIN_VERBOSE" in os.environ  # unset on every rung
torch.manual_seed(0)
x, y = torch.randn(64, 4), torch.randn(64, 1)
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(5):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    print(f"step={step} loss={loss.item():.6f}", flush=True)
if verbose:
    print(host, machine, home)
torch.save(model.state_dict(), os.path.join(os.environ["SM_MODEL_DIR"], "model.pt"))
