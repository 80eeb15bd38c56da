"""Imports a package only requirements.txt provides, logs a deterministic curve, writes a table."""

import argparse
import os

import tabulate  # not in the image: installed from requirements.txt before this script starts

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=5)
args = parser.parse_args()

rows = []
for step in range(args.steps):
    loss = 1.0 / (step + 1)
    rows.append([step, loss])
    print(f"step={step} loss={loss:.6f}", flush=True)
host = os.environ["SM_CURRENT_HOST"]
with open(os.path.join(os.environ["SM_MODEL_DIR"], f"{host}-losses.txt"), "w") as handle:
    handle.write(tabulate.tabulate(rows, headers=["step", "loss"]) + "\n")
print(f"tabulate {tabulate.__version__} wrote {host}-losses.txt")
