"""Entry point: accelerate's own command line (``accelerate launch``), run in this process as
its __main__, across the job's hosts as a SageMaker user would start it; the program it launches
is accelerate's ``test_sync`` module (no code of accelerate's is copied here)."""

import json
import os
import runpy
import sys

hosts = json.loads(os.environ["SM_HOSTS"])
sys.argv = [
    "accelerate",
    "launch",
    "--multi_gpu",  # torch.distributed.run; the ranks run on CPU (ACCELERATE_USE_CPU)
    "--num_machines", str(len(hosts)),
    "--num_processes", str(len(hosts)),
    "--machine_rank", str(hosts.index(os.environ["SM_CURRENT_HOST"])),
    "--main_process_ip", hosts[0],
    "--main_process_port", "29500",
    "--mixed_precision", "no",
    "--dynamo_backend", "no",
    "-m", "accelerate.test_utils.scripts.test_sync",
]  # fmt: skip
runpy.run_module("accelerate.commands.accelerate_cli", run_name="__main__")
