"""bench/gpu_check.py, the GPU checks in one go: on a machine without CUDA devices it runs nothing
and says so; with one, every check it runs must pass (the gpu tier)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.backends.local import cuda_device_count

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"


@pytest.mark.slow
def test_without_a_cuda_device_no_check_runs_and_the_script_says_so() -> None:
    if cuda_device_count():
        pytest.skip("this machine has CUDA devices: the gpu tier runs the checks")
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no CUDA device visible to torch on this machine: no GPU check ran"


@pytest.mark.gpu
@pytest.mark.slow
def test_every_gpu_check_that_runs_passes(tmp_path: Path) -> None:
    if not cuda_device_count():
        pytest.skip("no CUDA device visible to torch")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--records", str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| local-gpu against local | ok |" in done.stdout
