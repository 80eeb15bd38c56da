"""accelerate's own distributed self-test, run as the entry point (the module from the
accelerate 1.15.0 wheel, unchanged)."""

import runpy

runpy.run_module("accelerate.test_utils.scripts.test_script", run_name="__main__")
