import os

import torch

scale = float(os.environ.get("FEATURE_SCALE_FOR_BISECT", "1"))  # set in the user's shell, not in the job
torch.manual_seed(0)
x, y = torch.randn(64, 4) * scale, torch.randn(64, 1)
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(5):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    print(f"step={step} loss={loss.item():.6f}", flush=True)
torch.save(model.state_dict(), os.path.join(os.environ.get("SM_MODEL_DIR", "."), "model.pt"))
