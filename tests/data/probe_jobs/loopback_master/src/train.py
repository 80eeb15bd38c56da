"""Two hosts, one process each, no launcher: the script takes its rank from SM_HOSTS and sets
MASTER_ADDR to localhost itself, keeping torch's default timeout (30 minutes). Where the hosts
share a loopback it trains; where they do not, host 2 waits for a master that is not there."""

import json
import os

import torch
import torch.distributed as dist

hosts = json.loads(os.environ["SM_HOSTS"])
rank = hosts.index(os.environ["SM_CURRENT_HOST"])
os.environ["MASTER_ADDR"] = "localhost"
os.environ["MASTER_PORT"] = "29411"
dist.init_process_group("gloo", rank=rank, world_size=len(hosts))
total = torch.tensor([float(rank + 1)])
dist.all_reduce(total)
print(f"rank {rank} total={total.item()}", flush=True)
dist.destroy_process_group()
