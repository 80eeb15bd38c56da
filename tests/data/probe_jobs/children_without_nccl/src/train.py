"""Every child asks for NCCL on a machine without it and dies; the parent never looks at their
exit codes and reports success."""

import multiprocessing
import os
import tempfile

import torch.distributed as dist


def worker(rank: int, path: str) -> None:
    dist.init_process_group("nccl", init_method=f"file://{path}", rank=rank, world_size=2)


if __name__ == "__main__":
    path = os.path.join(tempfile.mkdtemp(), "rendezvous")
    children = [multiprocessing.Process(target=worker, args=(rank, path)) for rank in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join()
    print("training done", flush=True)
