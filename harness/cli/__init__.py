"""``harness``: the command line. Exit codes: 0 parity (or success), 1 divergence or failure
found, 2 bad usage or input, 130 interrupted. Documented in docs/cli.md.

Every error a user can cause is one line on stderr (``harness: error: ...``) and a hint, never
a traceback: a :class:`HarnessError` raised anywhere, a refused file system operation, a reader
that closed the pipe (``harness show R | head``: the rest of the output is dropped, the command
ends as it would have).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from harness.cli.arguments import build_parser
from harness.cli.console import drop, emit
from harness.cli.job_commands import cmd_bisect, cmd_ladder, cmd_run
from harness.cli.machine_commands import cmd_doctor, cmd_gc, cmd_image, cmd_localstack
from harness.cli.record_commands import cmd_diff, cmd_show
from harness.errors import HarnessError
from harness.runtime import interrupts
from harness.runtime.interrupts import Interrupted

COMMANDS = {
    "run": cmd_run,
    "ladder": cmd_ladder,
    "bisect": cmd_bisect,
    "diff": cmd_diff,
    "show": cmd_show,
    "doctor": cmd_doctor,
    "gc": cmd_gc,
    "image": cmd_image,
    "localstack": cmd_localstack,
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        with interrupts.stopping_on_signals():
            args = build_parser().parse_args(argv)
            return COMMANDS[args.command](args)
    except HarnessError as exc:
        emit(f"harness: error: {exc.message}", err=True)
        if exc.hint:
            emit(f"hint: {exc.hint}", err=True)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        what = exc.args[0] if isinstance(exc, Interrupted) else "Ctrl-C"
        print(
            f"harness: stopped by {what}; every process and container was stopped and the record marked interrupted",
            file=sys.stderr,
        )
        return exc.exit_code if isinstance(exc, Interrupted) else 130
    except BrokenPipeError:  # output the CLI writes itself never gets here (emit); argparse's --help may
        drop(sys.stdout)
        return 0
    except OSError as exc:  # the operating system refused something the checks could not foresee
        if os.environ.get("HARNESS_DEBUG"):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        emit(f"harness: error: {where}{exc.strerror or exc}", err=True)
        emit("hint: check the path, its permissions and free space; HARNESS_DEBUG=1 shows the traceback", err=True)
        return 1
