"""What the CLI prints: output that survives a reader going away (``| head``), and the progress of a rung as it runs."""

from __future__ import annotations

import os
import sys
import textwrap
import threading
import time
from typing import IO

from harness.spec.workload import Workload

#: The width the CLI wraps its lines to.
WIDTH = 100


def emit(text: str = "", *, err: bool = False, end: str = "\n") -> None:
    """``text`` on stdout (or stderr), flushed (a CI log shows it at once). When the reader has
    closed the pipe, the rest of the output goes nowhere and the command carries on."""
    stream = sys.stderr if err else sys.stdout
    try:
        stream.write(text + end)
        stream.flush()
    except BrokenPipeError:
        drop(stream)


def drop(stream: IO[str]) -> None:
    """Point ``stream`` at /dev/null (the recipe of the Python docs for SIGPIPE): what is still
    buffered, and everything written later, is discarded without another BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (a test's capture): nothing to redirect
        pass


def _progress_every_s() -> float:
    """Seconds between progress lines when stderr is no terminal: ``$HARNESS_PROGRESS_EVERY``
    (default 30; 0 turns them off)."""
    try:
        return max(0.0, float(os.environ.get("HARNESS_PROGRESS_EVERY", "30")))
    except ValueError:
        return 30.0


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 'es' if word.endswith('s') else 's'}"


def _topology(job: Workload) -> str:
    topology = job.topology()
    return f"{plural(len(topology['hosts']), 'host')} x {plural(topology['processes_per_host'], 'process')}"


def duration(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class RungProgress:
    """What a rung is doing, on stderr. Always a line when the rung starts. On a terminal, one
    status line rewritten in place (elapsed time, the last line a host printed); elsewhere (a
    CI log, a file) a line every ``HARNESS_PROGRESS_EVERY`` seconds with the same, and one when
    the rung ends; ``-v`` streams every line the job prints instead."""

    def __init__(self, rung: str, job: Workload, verbose: bool) -> None:
        self.rung, self.verbose, self.start = rung, verbose, time.monotonic()
        self.tty = sys.stderr.isatty()
        self.last: tuple[str, str] | None = None
        self.stopped = threading.Event()
        emit(f"[{rung}] starting: {_topology(job)}", err=True)
        every = _progress_every_s()
        if not self.tty and not verbose and every > 0:
            threading.Thread(target=self._tick, args=(every,), name="harness-progress", daemon=True).start()

    def elapsed(self) -> str:
        return duration(time.monotonic() - self.start)

    def __call__(self, host: str, line: str) -> None:
        self.last = (host, line)
        if self.verbose:
            emit(f"[{self.rung} {host}] {line}", err=True)
        elif self.tty:
            text = f"[{self.rung} {time.monotonic() - self.start:6.1f}s] {host}: {line}"
            emit(f"\r\x1b[K{text[:150]}", err=True, end="")

    def _tick(self, every: float) -> None:
        shown = None
        while not self.stopped.wait(every):
            last = self.last
            said = "no output yet" if last is None else f"{last[0]}: {last[1][:200]}"
            if last is not None and last is shown:
                said = f"no new output; last {said}"
            shown = last
            emit(f"[{self.rung} {self.elapsed()}] running; {said}", err=True)

    def done(self, status: str | None) -> None:
        """The rung ended with ``status`` (None: it broke off); said once."""
        if self.stopped.is_set():
            return
        self.stopped.set()
        if self.tty and not self.verbose:
            emit("\r\x1b[K", err=True, end="")
        elif not self.tty:
            emit(f"[{self.rung}] {status or 'stopped'} after {self.elapsed()}", err=True)


def wrapped(text: str, first: str, rest: str | None = None) -> list[str]:
    """``text`` wrapped at word boundaries (never cut in a word), the first line after ``first``."""
    return textwrap.wrap(
        text,
        WIDTH,
        initial_indent=first,
        subsequent_indent=rest if rest is not None else first,
        break_long_words=False,
        break_on_hyphens=False,
    ) or [first.rstrip()]
