"""Probe transparency, compared: a job run with the probe and without it (``get_backend("local",
probe=False)``) must end alike: same status and exit codes, same lines on its hosts' output
(timestamps and run-to-run values such as pids aside), same artifact bytes, and no failure of the
probe itself (``probe_errors`` in a process record). Shared by tests/test_probe_transparency.py
and tests/test_corpus.py.

The one difference allowed is the documented one (harness/probe/_harness_probe.py): a traceback
through a hooked call shows one frame of the probe; :func:`output_lines` leaves those lines out.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from harness.judge.logs import normalise
from harness.record.run_record import RunRecord, log_text

#: A traceback frame of the probe: its "File" line and the indented lines under it.
_PROBE_FRAME = re.compile(r'^(?P<prefix>(?:\[[\w:]+\]:? ?)?)\s*File "[^"]*_harness_probe\.py", line \d+, in ')


#: Where a traceback starts: multiprocessing's "Process Name-N:" header or the traceback's own.
_TRACEBACK_START = re.compile(r"^(?:Process [\w-]+:|Traceback \(most recent call last\):)$")
#: A traceback's exception line (unindented, ``pkg.Name: message``) and the lines that chain one.
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*(?P<name>[A-Za-z_]\w*)(?::|$)")
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")


def output_lines(record: RunRecord, ignore: Iterable[re.Pattern[str]] = ()) -> Counter[str]:
    """Every host's output as a multiset of lines, without timestamps, normalised as the logs
    check compares rungs (pids, ports, temporary paths), without the probe's traceback frames and
    without lines ``ignore`` matches (ones a program prints a different number of times from run
    to run, with or without the probe).

    A traceback that ends in torch elastic's ``SignalException`` is left out whole: its process
    was stopped by its launcher, and whether the signal came while it was printing a traceback of
    its own races (accelerate's notebook_launcher test, probe or not)."""
    ignore = tuple(ignore)
    lines: Counter[str] = Counter()

    def keep(block: list[str]) -> None:
        for text in block:
            if not any(pattern.search(text) for pattern in ignore):
                lines[normalise(text)] += 1

    for host in record.hosts:
        path = record.host_log(host)
        if not path.is_file():
            continue
        inside: str | None = None  # the prefix of the probe frame being skipped
        traceback: list[str] = []  # the traceback being read, kept or dropped at its end
        ended: str | None = None  # its last exception's name, until a line shows no chain follows
        for raw in path.read_text(errors="replace").splitlines():
            text = log_text(raw)
            frame = _PROBE_FRAME.match(text)
            if frame:
                inside = frame["prefix"]
                continue
            if inside is not None and text.startswith(inside) and text[len(inside) :].startswith("    "):
                continue
            inside = None
            if not text.strip():
                continue
            if ended is not None and not text.startswith(_CHAINED):
                if ended != "SignalException":
                    keep(traceback)
                traceback, ended = [], None
            if traceback or _TRACEBACK_START.match(text):
                traceback.append(text)
                exception = _EXCEPTION_LINE.match(text)
                ended = (
                    exception["name"] if exception and len(traceback) > 1 and not text.startswith(_CHAINED) else None
                )
                continue
            keep([text])
        if ended != "SignalException":
            keep(traceback)
    return lines


def same_output(with_probe: Counter[str], without: Counter[str]) -> tuple[bool, list[str]]:
    """Equal multisets of lines; where processes wrote to one pipe at once, a line may be cut or
    joined differently from run to run (two ranks' "a" and "\\n" writes interleave), so lines that
    differ are equal when their characters are. Returns (equal, the differing lines)."""
    only_on, only_off = with_probe - without, without - with_probe
    differing = [f"with the probe only: {line}" for line in only_on] + [f"without only: {line}" for line in only_off]
    if not differing:
        return True, []
    chars_on = Counter("".join(line for line in only_on.elements()).replace(" ", ""))
    chars_off = Counter("".join(line for line in only_off.elements()).replace(" ", ""))
    return chars_on == chars_off, differing


def artifact_hashes(record: RunRecord, run_unique: Iterable[str] = ()) -> dict[str, dict[str, str]]:
    """Each archive's files and their SHA-256; a file named in ``run_unique`` (one the program
    writes differently on every run, a random id in it) has its name only."""
    unique = set(run_unique)
    summary = json.loads((record.root / "artifacts" / "summary.json").read_text())
    return {
        archive: {
            name: "<differs on every run>" if name in unique else f["sha256"] for name, f in info["files"].items()
        }
        for archive, info in summary.items()
    }


def probe_errors(record: RunRecord) -> list[str]:
    return [f"pid {p['pid']}: {e}" for p in record.processes() for e in p.get("probe_errors", [])]


def assert_transparent(
    with_probe: RunRecord,
    without: RunRecord,
    *,
    ignore: Iterable[re.Pattern[str]] = (),
    run_unique: Iterable[str] = (),
) -> None:
    """Alike with and without the probe; ``ignore`` and ``run_unique``: see :func:`output_lines`
    and :func:`artifact_hashes`."""
    ignore, run_unique = tuple(ignore), tuple(run_unique)
    assert with_probe.manifest.rung_facts.get("probe") == "on" and without.manifest.rung_facts.get("probe") == "off"
    assert with_probe.status == without.status

    def exits(record: RunRecord) -> dict[str, Any]:
        return {host: result.exit_code for host, result in record.manifest.hosts.items()}

    assert exits(with_probe) == exits(without)
    equal, differing = same_output(output_lines(with_probe, ignore), output_lines(without, ignore))
    assert equal, "output differs:\n" + "\n".join(differing[:40])
    assert artifact_hashes(with_probe, run_unique) == artifact_hashes(without, run_unique)
    assert not probe_errors(with_probe)
