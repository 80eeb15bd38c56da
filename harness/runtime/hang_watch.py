"""Hang detection: when no rank makes progress for a while, dump every rank's Python stack,
then let the rung stop the job. The probe keeps ``ranks/rank-N.heartbeat`` (batches,
collectives, optimizer steps) current and dumps its stacks on SIGUSR1.

Progress is any rank's counters moving or any host printing. Until the first counter moves
(imports, compilation, the rendezvous) a job gets at least :data:`STARTUP_GRACE_S`, so a short
``--hang-after`` never fires inside ``import torch``. A job stopped at ``max_run`` has its
stacks dumped first too (:meth:`HangWatch.dump`), so a timeout is always localised.

A rendezvous has a watchdog of its own: a process the probe saw enter ``init_process_group``
and not leave, while no other process arrives or joins for the same bound, will not meet its
peers (torch's own timeout is 10 to 30 minutes), whatever its host prints meanwhile."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from harness.errors import RecordError
from harness.record.run_record import RecordFiles

#: Seconds without any rank's progress after which a job counts as hung.
DEFAULT_HANG_AFTER_S = 300.0
#: Seconds a job may take before its first batch, collective or step without counting as hung.
STARTUP_GRACE_S = 120.0
_DUMP_WAIT_S = 2.0
#: Seconds between two reads of the process records for the rendezvous watchdog.
_RENDEZVOUS_POLL_S = 1.0


def hang_after(option: float, explicit: bool, max_run: float) -> float:
    """The bound a run uses: the user's, or the default cut to half of ``max_run`` so that a hang
    is found (and its stacks taken) before the job's own time runs out."""
    return option if explicit else min(option, max(max_run / 2, 1.0))


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
        logs: Callable[[], list[Path]] = list,
    ) -> None:
        """``logs``: the host logs, whose growth counts as progress too."""
        self.files = RecordFiles(record_root)
        self.after_s, self.signal_rank, self.logs = after_s, signal_rank, logs
        self.progress: tuple[object, ...] = ()
        self.started = False
        self.since = time.monotonic()
        self.arrivals: tuple[tuple[str, int, bool], ...] = ()
        self.arrivals_since = self.read_at = self.since

    def rendezvous_stalled(self) -> bool:
        """Some process waits in the rendezvous and none has arrived or joined for the bound."""
        now = time.monotonic()
        if now - self.read_at < _RENDEZVOUS_POLL_S:
            return False
        self.read_at = now
        try:
            processes = self.files.processes()
        except RecordError:  # a process record being replaced: read it next time
            return False
        arrivals = tuple(
            sorted(
                (str(p["host"]), int(p["pid"]), bool(p["rendezvous"].get("joined_at")))
                for p in processes
                if isinstance(p.get("rendezvous"), dict)
            )
        )
        if arrivals != self.arrivals:
            self.arrivals, self.arrivals_since = arrivals, now
            return False
        return any(not joined for *_, joined in arrivals) and now - self.arrivals_since >= self.after_s

    def poll(self) -> bool:
        if self.rendezvous_stalled():
            self.dump()
            return True
        beats = self.files.heartbeats()
        counters = tuple((rank, b.get("batches"), b.get("collectives"), b.get("steps")) for rank, b in beats.items())
        progress = (counters, tuple(path.stat().st_size if path.is_file() else 0 for path in self.logs()))
        now = time.monotonic()
        if progress != self.progress:
            self.progress, self.since = progress, now
            self.started = self.started or any(any(value for value in rank[1:] if value) for rank in counters)
            return False
        bound = self.after_s if self.started else max(self.after_s, STARTUP_GRACE_S)
        if not beats or now - self.since < bound:
            return False
        self.dump()
        return True

    def dump(self) -> bool:
        """Every rank's stacks into ``ranks/rank-N.stacks.txt`` (SIGUSR1 to each rank the probe
        saw); False when no rank has a heartbeat, so none can be reached."""
        beats = self.files.heartbeats()
        for beat in beats.values():
            self.signal_rank(int(beat["pid"]), beat.get("host"))
        if beats:
            time.sleep(_DUMP_WAIT_S)
        return bool(beats)
