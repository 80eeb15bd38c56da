"""Running processes the way a training platform does: logs captured line by line with the time
they arrived, a wall-clock limit (``max_run``), and a stop that leaves nothing running.

Each host's launcher gets its own process group, so stopping a host stops everything it
started (torchrun's workers, DataLoader workers, the probe's tees). Stopping follows SageMaker's
``docker stop``: SIGTERM, a grace period, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.record.run_record import now, scrub, secret_values
from harness.runtime import interrupts
from harness.runtime.hang_watch import HangWatch

#: Seconds between SIGTERM and SIGKILL (SageMaker waits 120 s; a harness run should not).
STOP_GRACE_S = 10.0
#: How long a process SIGKILL was sent to may take to be reaped before the harness goes on.
REAP_S = 5.0
LineSink = Callable[[str, str], None]  # (host, line)


@dataclass
class HostLaunch:
    """One host's launcher process as the rung wants it started."""

    host: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    preexec_fn: Callable[[], None] | None = None


@dataclass
class Outcome:
    exit_codes: dict[str, int] = field(default_factory=dict)
    timed_out: bool = False
    hung: bool = False
    started_at: dict[str, str] = field(default_factory=dict)
    ended_at: dict[str, str] = field(default_factory=dict)


def _pump(stream: object, log_path: Path, host: str, sink: LineSink | None, secrets: tuple[bytes, ...]) -> None:
    with log_path.open("ab", buffering=0) as log:
        for line in stream:  # type: ignore[attr-defined]
            raw = scrub(line, secrets)
            log.write(now().encode() + b" " + raw)
            if sink is not None:
                sink(host, raw.decode("utf-8", "replace").rstrip("\n"))


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def stop(procs: dict[str, subprocess.Popen[bytes]], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM every host's process group, then SIGKILL what is left after ``grace_s``."""
    for proc in procs.values():
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    for proc in procs.values():
        _signal_group(proc, signal.SIGKILL)  # also reaps grandchildren that outlived their parent
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=REAP_S)


def run_hosts(
    launches: list[HostLaunch], *, max_run_s: float, sink: LineSink | None = None, hang: HangWatch | None = None
) -> Outcome:
    """Start every host and wait for all of them; stop them all on timeout, hang, a signal (then
    :class:`harness.runtime.interrupts.Interrupted` is raised, once everything is stopped), or as soon as
    one host fails (as SageMaker stops a training job's instances)."""
    with interrupts.deferred():
        outcome = _supervise(launches, max_run_s=max_run_s, sink=sink, hang=hang)
    interrupts.raise_if_requested()
    return outcome


def _supervise(
    launches: list[HostLaunch], *, max_run_s: float, sink: LineSink | None, hang: HangWatch | None
) -> Outcome:
    outcome = Outcome()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    pumps: list[threading.Thread] = []
    try:
        for launch in launches:
            launch.log_path.parent.mkdir(parents=True, exist_ok=True)
            proc = subprocess.Popen(
                launch.argv,
                env=launch.env,
                cwd=launch.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=launch.preexec_fn,
            )
            procs[launch.host] = proc
            outcome.started_at[launch.host] = now()
            pump = threading.Thread(
                target=_pump,
                daemon=True,
                args=(proc.stdout, launch.log_path, launch.host, sink, secret_values(launch.env)),
            )
            pump.start()
            pumps.append(pump)
        deadline = time.monotonic() + max_run_s
        while True:
            codes = [p.poll() for p in procs.values()]  # every one, each time: any() would stop at the first
            if all(code is not None for code in codes) or interrupts.requested():
                break
            if time.monotonic() > deadline:
                outcome.timed_out = True
                if hang is not None:
                    hang.dump()  # where each rank was when time ran out
                break
            if hang is not None and hang.poll():
                outcome.hung = True
                break
            for host, proc in procs.items():
                if proc.returncode is not None and host not in outcome.ended_at:
                    outcome.ended_at[host] = now()
            if any(code not in (None, 0) for code in codes):
                break  # a training job fails, and its instances stop, as soon as one host fails
            time.sleep(0.05)
    finally:
        if any(p.poll() is None for p in procs.values()):
            stop(procs)
        for pump in pumps:  # the probe's tees flush a rank's last lines after it exits
            pump.join(timeout=REAP_S)
        for proc in procs.values():  # reap whatever the launchers left running in their groups
            _signal_group(proc, signal.SIGKILL)
    for host, proc in procs.items():
        outcome.exit_codes[host] = proc.returncode
        outcome.ended_at.setdefault(host, now())
    return outcome
