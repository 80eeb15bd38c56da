"""Hang detection: when no rank makes progress for a while, dump every rank's Python stack,
then let the rung stop the job. The probe keeps ``ranks/rank-N.heartbeat`` (batches,
collectives, optimizer steps) current and dumps its stacks on SIGUSR1."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from harness.record import RecordFiles

#: Seconds without any rank's progress after which a job counts as hung.
DEFAULT_HANG_AFTER_S = 300.0
_DUMP_WAIT_S = 2.0


def _signal_local(pid: int, host: str | None) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGUSR1)


class HangWatch:
    """Polled by the rung while the job runs; ``poll()`` is True once the job is hung (and its
    stacks are dumped). ``signal_rank(pid, host)`` reaches a rank's process (a container rung
    supplies its own: the pid is the container's)."""

    def __init__(
        self,
        record_root: Path,
        after_s: float = DEFAULT_HANG_AFTER_S,
        signal_rank: Callable[[int, str | None], None] = _signal_local,
    ) -> None:
        self.files = RecordFiles(record_root)
        self.after_s, self.signal_rank = after_s, signal_rank
        self.progress: tuple[object, ...] = ()
        self.since = time.monotonic()

    def poll(self) -> bool:
        beats = self.files.heartbeats()
        progress = tuple((rank, b.get("batches"), b.get("collectives"), b.get("steps")) for rank, b in beats.items())
        now = time.monotonic()
        if progress != self.progress:
            self.progress, self.since = progress, now
            return False
        if not beats or now - self.since < self.after_s:
            return False
        for beat in beats.values():
            self.signal_rank(int(beat["pid"]), beat.get("host"))
        time.sleep(_DUMP_WAIT_S)
        return True
