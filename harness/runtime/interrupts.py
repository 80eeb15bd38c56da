"""Stopping on a signal: Ctrl-C (SIGINT), SIGTERM and SIGHUP all end a run the same way.

CI runners, ``timeout``, Airflow, Kubernetes and systemd stop programs with SIGTERM, terminals
with SIGHUP, people with Ctrl-C; each must leave nothing running and the record ``interrupted``.
Raising from a signal handler lands in whatever code runs at that instant (inside
``Popen._internal_poll`` it once left a lock held and the harness hung), so while a rung
supervises its job the handler only sets a flag: the supervision loop reads it, stops every
process or container with bounded waits, and raises :class:`Interrupted` itself. Outside those
loops the handler raises :class:`Interrupted` at once, so that ``finally`` blocks clean up.

A signal that was ignored when the harness started (``nohup``, a background job of a
non-interactive shell ignores SIGINT) stays ignored.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """The harness was asked to stop by ``signum``; a ``KeyboardInterrupt``, so that every path
    that cleans up after Ctrl-C cleans up after SIGTERM and SIGHUP too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a program a signal ended (130, 143, 129)."""
        return 128 + self.signum


class _State:
    deferring = 0
    pending: int | None = None
    lock = threading.Lock()


def _handle(signum: int, frame: FrameType | None) -> None:
    if _State.deferring:
        _State.pending = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def stopping_on_signals() -> Iterator[None]:
    """Within the block SIGTERM and SIGHUP stop the harness as Ctrl-C does (the CLI's whole run)."""
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, _handle)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within the block a signal only sets the flag that :func:`requested` reads; the caller stops
    what it supervises, and the block's end raises :class:`Interrupted` for it (also when the
    block ends in another exception: the signal is what the user asked for, and a flag left set
    would stop the next supervision loop at once). Handlers can only be set from the main
    thread; elsewhere the block changes nothing."""
    main = threading.current_thread() is threading.main_thread()
    previous = {}
    if main:
        for signum in SIGNALS:
            handler = signal.getsignal(signum)
            if handler is not signal.SIG_IGN:
                previous[signum] = handler
                signal.signal(signum, _handle)
    with _State.lock:
        _State.deferring += 1
    try:
        yield
    finally:
        with _State.lock:
            _State.deferring -= 1
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if not _State.deferring:
            raise_if_requested()


def requested() -> bool:
    """Whether a signal arrived while deferred and has not been raised yet."""
    return _State.pending is not None


def raise_if_requested() -> None:
    """Raise :class:`Interrupted` for a signal that arrived while deferred (once)."""
    signum, _State.pending = _State.pending, None
    if signum is not None:
        raise Interrupted(signum)
