"""Supervising host processes under signals: wherever Ctrl-C lands, the harness stops everything
and returns, within a bound, with nothing left running."""

from __future__ import annotations

import faulthandler
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.runtime.interrupts import Interrupted
from harness.runtime.supervise import HostLaunch, run_hosts


def _running(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid,stat,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if marker in line and " Z" not in line and "ps -ww" not in line]


@pytest.mark.slow
def test_sigint_at_random_points_of_the_supervision_loop_never_hangs(tmp_path: Path) -> None:
    """200 runs, each interrupted at a random instant (while hosts start, while they run, while
    their logs are pumped): every run ends with Interrupted, no launcher or grandchild survives.
    A run that hangs fails the test (faulthandler) instead of hanging the suite."""
    marker = f"harness-supervise-{os.getpid()}"
    script = (
        "import subprocess, sys, time\n"  # a grandchild carrying the marker too
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)', '{marker}'])\n"
        f"print('{marker}', flush=True)\ntime.sleep(30)\n"
    )
    rng = random.Random(20261129)
    faulthandler.dump_traceback_later(600, exit=True)
    # Ctrl-C as a terminal delivers it: a suite started as a background job of a non-interactive
    # shell inherits SIGINT ignored, and the harness rightly leaves an ignored SIGINT ignored.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupted = 0  # attempts the harness stopped itself (the others: Ctrl-C before it began)
    try:
        for attempt in range(200):
            launches = [
                HostLaunch(
                    f"algo-{n}",
                    [sys.executable, "-c", script, marker],
                    dict(os.environ),
                    tmp_path,
                    tmp_path / f"{attempt}-{n}.log",
                )
                for n in (1, 2)
            ]
            timer = threading.Timer(rng.uniform(0.0, 0.25), os.kill, (os.getpid(), signal.SIGINT))
            started = time.monotonic()
            try:
                timer.start()
                run_hosts(launches, max_run_s=60)
                raise AssertionError(f"attempt {attempt}: the run ended without the interrupt")
            except KeyboardInterrupt as exc:
                # The harness defers signals from its first step on, so a bare KeyboardInterrupt
                # is one that landed before the supervision began: no host started, no log written.
                logs = [launch.log_path for launch in launches if launch.log_path.exists()]
                assert isinstance(exc, Interrupted) or not logs, f"attempt {attempt}: {exc!r} after {logs}"
                interrupted += isinstance(exc, Interrupted)
            finally:
                timer.join()
            assert time.monotonic() - started < 30, f"attempt {attempt} took {time.monotonic() - started:.1f} s"
            assert _running(marker) == [], f"attempt {attempt} left processes behind"
        assert interrupted >= 100, f"only {interrupted} of 200 attempts were stopped by the harness"
    finally:
        signal.signal(signal.SIGINT, inherited)
        faulthandler.cancel_dump_traceback_later()
