"""Why a run failed, and where to look: the lines of its logs that say so, with their places."""

from __future__ import annotations

import re
import signal
from typing import Any

from harness.cli.console import wrapped
from harness.errors import HarnessError
from harness.judge import logs
from harness.judge.protocol import CheckContext
from harness.record.run_record import RunRecord

_WHERE = re.compile(r"^(?P<source>\S+?):(?P<line>\d+) (?P<stamp>\S*) (?P<text>.*)$")


_ERROR_LINE = re.compile(r"\b\w*(Error|Exception|Interrupt|Exit|Killed|Failure)\b|\berror\b", re.I)


def exit_code(code: Any) -> str:
    """An exit code, with the signal a negative one (or one above 128) stands for."""
    if not isinstance(code, int):
        return "none"
    number = -code if code < 0 else code - 128 if code > 128 else 0
    try:
        return f"{code} ({signal.Signals(number).name})" if number else str(code)
    except ValueError:
        return str(code)


def failure_line(reason: str) -> str:
    """The line of a failure reason that says what went wrong: the last that reads as an error
    (an ``ErrorMessage`` of the launcher, an exception), else its last line; never the
    launcher's command or exit code lines."""
    lines = [line.strip().removeprefix("ErrorMessage ").strip('"').strip() for line in reason.splitlines()]
    lines = [
        line
        for line in lines
        if line and not line.startswith(("Command ", "ExitCode ")) and line != "ExecuteUserScriptError:"
    ]
    errors = [line for line in lines if _ERROR_LINE.search(line)]
    return (errors or lines or [reason.strip()])[-1]


def why_it_failed(record: RunRecord, *, relative: bool = False) -> list[str]:
    """A failed run in a few lines: its first error (the logs check: which rank, which known
    failure, the line), each failing host's exit code, the log files to open (``relative``: to
    the record), the fix hint; last, the command that shows the whole record."""
    lines: list[str] = []
    finding = None
    try:
        finding = next(iter(logs.check_run(record, CheckContext())), None)
    except HarnessError:
        finding = None
    failing = record.manifest.failed_hosts()
    where = _WHERE.match(finding.evidence[0]) if finding and finding.evidence else None
    look: list[str] = []
    if finding is not None:
        lines.append(f"  cause: {finding.title}")
        if where:
            lines += wrapped(where["text"], "    ")
            look.append(f"{record.root / where['source']}:{where['line']}")  # made relative below
    elif failing:
        host, result = next(iter(failing.items()))
        reason = result.failure_reason
        lines += wrapped(
            f"{host} exited with {exit_code(result.exit_code)}" + (f": {failure_line(reason)}" if reason else ""),
            "  cause: ",
            "    ",
        )
    elif record.status == "timeout":
        lines.append(f"  cause: the job ran past max_run ({record.manifest.job.max_run} s) and was stopped")
    if record.status == "hung":
        lines.append("  the job stopped making progress: every rank's stacks were dumped, then it was stopped")
        look += [str(path) for path in record.rank_stacks().values() if path.stat().st_size]
    if record.manifest.error:
        lines += wrapped(record.manifest.error, "  harness error: ", "    ")
    if failing:
        lines.append("  exit codes: " + ", ".join(f"{h} {exit_code(r.exit_code)}" for h, r in failing.items()))
    look += [str(record.host_log(host)) for host in failing or record.hosts if record.host_log(host).is_file()]
    look = [path for path in look if not any(other.startswith(f"{path}:") for other in look)]  # path:line says it
    if relative:
        look = [path.removeprefix(f"{record.root}/") for path in look]
    for index, path in enumerate(dict.fromkeys(look)):
        lines.append(("  logs: " if index == 0 else "        ") + path)
    if finding is not None and finding.hint:
        lines += wrapped(finding.hint, "  hint: ", "    ")
    lines.append(f"  more: harness show {record.root}")
    return lines
