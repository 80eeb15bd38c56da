"""Entry point: accelerate's own module, run as its __main__ (no code of accelerate's is copied here)."""

import runpy

runpy.run_module("accelerate.test_utils.scripts.test_distributed_data_loop", run_name="__main__")
