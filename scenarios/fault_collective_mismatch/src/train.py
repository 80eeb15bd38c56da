"""Rank 0 averages a validation metric with an extra all_reduce that no other rank issues."""

import torch
import torch.distributed as dist


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = torch.nn.Linear(4, 1)
    for step in range(5):
        grad = torch.ones(4) * step
        dist.all_reduce(grad)
        if rank == 0 and step == 2:
            metric = torch.tensor([0.5])
            dist.all_reduce(metric)  # only rank 0 gets here: its peers wait in the next step's all_reduce
        print(f"step={step} loss={float(model.weight.sum()):.6f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
