"""Signal dispositions for a harness that a test starts and then signals."""

from __future__ import annotations

import signal


def terminal_signals() -> None:
    """``preexec_fn``: the dispositions a terminal gives a program. A background job of a
    non-interactive shell (CI started with ``&``) starts its children with SIGINT ignored, which
    Python then leaves ignored, and a test's Ctrl-C would never arrive."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
