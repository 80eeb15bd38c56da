"""The Markdown summary of a test session's parity checks: what the pytest plugin writes as
``summary.md`` and a CI job posts on the pull request. A row per ladder, the test's outcome as
pytest saw it beside the ladder's verdict and a link to its records, then each verdict that did
not find parity, folded (docs/pre-merge.md)."""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from harness.judge.verdict import Verdict
from harness.report.verdict_text import to_text

_DETAILS_LIMIT = 6000  # characters of one verdict in the summary


@dataclass
class ParityCheck:
    """One ladder of a session: its verdict and the directory of its records, or why there is
    none (``reason``: the test skipped it, or it broke)."""

    test: str
    verdict: Verdict | None
    records: Path | None = None
    reason: str = ""


def verdict_words(check: ParityCheck, test_outcome: str) -> str:
    """The ladder's verdict, said with the test's outcome in mind: a departure that the test
    expected (it passed, or was an expected failure) is ``diverged, expected by the test``."""
    if check.verdict is None:
        return "not climbed"
    outcome = check.verdict.outcome
    if outcome in ("diverged", "failed") and test_outcome in ("passed", "xfailed"):
        return f"{outcome}, expected by the test"
    return outcome.replace("-", " ")


def session_summary(checks: list[ParityCheck], tests: dict[str, str] | None = None, where: Path | None = None) -> str:
    """The session's checks: one table row each, with the test's outcome as pytest saw it next to
    its ladder's verdict and a link to its records (relative to ``where``, the summary's
    directory), then the verdict of each ladder that did not find parity, folded."""
    if not checks:
        return "## Parity checks\n\nNo parity check ran.\n"
    tests = tests or {}
    rows = [_row(check, tests.get(check.test, "unfinished"), where) for check in checks]
    details = [
        _details(check, tests.get(check.test, "unfinished"))
        for check in checks
        if check.verdict is not None and check.verdict.outcome != "parity"
    ]
    header = ["| test | result | verdict | rungs | departs | records | notes |", "|---|---|---|---|---|---|---|"]
    return "\n".join(["## Parity checks", "", *header, *rows, *details, ""])


def _row(check: ParityCheck, test_outcome: str, where: Path | None = None) -> str:
    shown = test_outcome if test_outcome in ("passed", "skipped", "xfailed") else f"**{test_outcome.upper()}**"
    words = verdict_words(check, test_outcome)
    verdict = check.verdict
    if verdict is None:
        return f"| `{check.test}` | {shown} | none | none | | | {_cell(check.reason)} |"
    if verdict.outcome in ("diverged", "failed") and "expected" not in words:
        words = f"**{verdict.word}**"
    departs = verdict.first_rung or ""
    if verdict.first_rung and verdict.first_step is not None:
        departs += f" at step {verdict.first_step}"
    skipped = "; ".join(f"skipped {rung}: {reason}" for rung, reason in verdict.skipped.items())
    return (
        f"| `{check.test}` | {shown} | {words} | {' → '.join(verdict.rungs)} | {departs} | "
        f"{_links(check.records, where)} | {_cell(skipped)} |"
    )


def _links(records: Path | None, where: Path | None) -> str:
    """Links to the ladder's directory and its verdict.json, relative to the summary."""
    if records is None:
        return ""
    directory = records.absolute()
    try:
        path = Path(os.path.relpath(directory, where.absolute())).as_posix() if where is not None else str(directory)
    except ValueError:  # another drive
        path = str(directory)
    target = quote(path)
    return f"[records]({target}/) · [verdict.json]({target}/verdict.json)"


def _details(check: ParityCheck, test_outcome: str = "unfinished") -> str:
    assert check.verdict is not None
    test, text = check.test, to_text(check.verdict)
    if len(text) > _DETAILS_LIMIT:  # a comment holds 65,536 characters; verdict.json holds all
        text = text[:_DETAILS_LIMIT] + "\n… (cut here: the whole verdict is in the ladder's verdict.json)"
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    words = verdict_words(check, test_outcome)
    return (
        f"\n<details><summary><code>{html.escape(test)}</code>: {html.escape(words)} "
        f"(test {html.escape(test_outcome)})</summary>\n\n{fence}text\n{text}\n{fence}\n</details>"
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
