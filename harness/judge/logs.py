"""What the processes printed, read as evidence: which rank failed first, with which known error,
and which later errors on other ranks are only echoes of it.

In a distributed job one fault makes every rank print something: the rank that called the wrong
collective reports a mismatch, its peers then report "Connection reset by peer", torchrun reports
ChildFailedError and SIGTERMs the survivors. The last or the loudest error is rarely the cause, so
every match of the catalogue (``harness/judge/signatures.yaml``, data, so that a new failure mode needs
no code) goes on one timeline and the earliest *root* error wins, near-ties broken by priority.
Where that error only says a peer never came (a timeout), the rank at fault is the one the
messages name, the one alone at another call site, or the one that fell silent.

Speed (a long job writes millions of lines): files are read in large binary chunks; a line is
decoded only if the lower-cased chunk holds one of the catalogue's keywords there (``bytes.find``
is far faster than any regex over every line), and then tried only against the signatures that
keyword can announce. Only the chunk in hand and a little before it (for the traceback frame
above an error) are held in memory.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.resources
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.judge import library_errors
from harness.judge.findings import Finding
from harness.judge.protocol import CheckContext
from harness.record.run_record import RunRecord

CHUNK = 8 << 20
LOOKBACK = 32 << 10  # bytes before an error searched for the job's traceback frame
TIE_S = 1.0  # root errors this close to the first count as simultaneous: priority decides
_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) ")
_RANK_PREFIX = re.compile(r"\[rank(\d+)\]:")
_FRAME = re.compile(r'File "(?P<path>[^"]+)", line (?P<line>\d+)')
_LIBRARY = re.compile(r"site-packages|dist-packages|/lib/python\d|<frozen|<string>|_harness_probe")
_NORMALISE = [
    (re.compile(p), r)
    for p, r in [
        (r"^\d{4}-\d\d-\d\dT[\d:.]+Z ", ""),
        (r"\d{4}-\d\d-\d\d[T _]\d\d:\d\d:\d\d(?:[.,]\d+)?Z?", "<time>"),
        (r"\b([EWIF])\d{4} \d\d:\d\d:\d\d\.\d+(?: \d+(?= ))?", r"\1<time>"),  # glog: level, time, pid
        (r"(?<![\w.-])[\w.-]+:\d+:\d+ (?=\[\d+\] )", "<host>:<pid>:<tid> "),  # NCCL's line prefix
        (r"\balgo-\d+(?:-[a-z0-9]{5})?\b|\bip-\d+-\d+-\d+-\d+\b", "<host>"),
        (r"(?<![\w:.])(?=[0-9a-fA-F:]*\d)(?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{0,4}(?![\w:.])", "<ip>"),
        (r"\b\d{1,3}(?:\.\d{1,3}){3}\b", "<ip>"),
        (r"(<ip>\]?|<host>|localhost):\d{2,5}\b", r"\1:<port>"),
        (r"(\((?:<ip>|<host>|localhost), )\d{2,5}\)", r"\1<port>)"),
        (r"(?<![A-Za-z])((?i:port)\w*['\"]?\s*[=:]?\s*)\d{2,5}\b", r"\1<port>"),
        (r"\b(pids?|PID|pid\(s\)|[Pp]rocess)(\s*[:=]?\s*)\d+", r"\1\2<pid>"),
        (r"\b0x[0-9a-fA-F]{4,}\b", "<hex>"),
        (r"/tmp/[^\s/'\"]+|/var/folders/[^\s'\"]+", "/tmp/<tmp>"),
        (r"\btorch_\d+_\d+(?:_\d+)?", "torch_<id>"),
    ]
]


def normalise(line: str) -> str:
    """``line`` without what differs between two runs of the same job: timestamps, host names,
    pids, ports, addresses, temporary paths. Logs of two rungs are compared in this form."""
    for pattern, replacement in _NORMALISE:
        line = pattern.sub(replacement, line)
    return line


@dataclass(frozen=True)
class Signature:
    """One known failure: how to recognise it and what to tell the user (see signatures.yaml)."""

    id: str
    title: str
    role: str  # "root" or "echo"
    priority: int
    patterns: tuple[re.Pattern[str], ...]
    exclude: tuple[re.Pattern[str], ...]
    explain: str
    hint: str
    fault: str = "self"  # who is at fault: "self", "peer" or "odd"
    last_words: tuple[re.Pattern[str], ...] = ()  # match the last line of a host that failed

    def ends(self, text: str) -> re.Match[str] | None:
        """A failed host whose output stops on this line: a launcher that died without a word."""
        return next((found for pattern in self.last_words if (found := pattern.search(text))), None)

    def match(self, text: str) -> re.Match[str] | None:
        for pattern in self.patterns:
            if found := pattern.search(text):
                return None if any(x.search(text) for x in self.exclude) else found
        return None


@dataclass(frozen=True)
class Catalogue:
    keywords: tuple[bytes, ...]  # lower case: a line holding none of them is no error
    signatures: tuple[Signature, ...]  # highest priority first
    gates: dict[str, tuple[int, ...]]  # keyword -> the signatures one of whose examples holds it

    def classify(self, text: str) -> tuple[Signature, re.Match[str]] | None:
        """The matching signature of highest priority, trying only those whose examples share a
        keyword with ``text`` (a line without its timestamp)."""
        low = text.lower()
        for index in sorted({i for k, gate in self.gates.items() if k in low for i in gate}):
            if found := self.signatures[index].match(text):
                return self.signatures[index], found
        return None


def _raised_by_library(text: str, window: bytes, prefix: str) -> Signature | None:
    """A distributed library's own refusal: the exception's message is one the library raises
    (:mod:`library_errors`) and the traceback's innermost frame is the file that raises it."""
    lines = window.decode("utf-8", "replace").split("\n")
    for line in reversed(lines[-120:]):
        said = _split(line)[1]
        if prefix and not said.startswith(prefix):
            continue
        if frame := _FRAME.search(said):
            error = library_errors.index().find(text, raised_in=frame["path"])
            return _library_signature(error) if error else None
        if "Traceback (most recent call last)" in said:
            return None
    return None


@functools.cache
def _library_signature(error: library_errors.LibraryError) -> Signature:
    """An exception a distributed library raised from its own check (:mod:`library_errors`)."""
    component = error.component
    return Signature(
        component.cause,
        f"{component.title} ({error.exception})",
        "root",
        10,
        (),
        (),
        f"the library's own check in {error.function}() ({error.source}) raised it",
        f"{component.hint}; read the check at {error.source} in {error.function}() for the condition it enforces",
    )


@functools.cache
def catalogue(path: Path | None = None) -> Catalogue:
    """The catalogue, compiled once: the package's ``signatures.yaml`` unless ``path`` is given."""
    text = (
        path.read_text()
        if path
        else importlib.resources.files("harness.judge").joinpath("signatures.yaml").read_text(encoding="utf-8")
    )
    data = yaml.safe_load(text)
    raw = sorted(data["signatures"], key=lambda s: -int(s["priority"]))
    signatures = tuple(
        Signature(
            s["id"],
            s["title"],
            s["role"],
            int(s["priority"]),
            tuple(re.compile(p) for p in s["patterns"]),
            tuple(re.compile(p) for p in s.get("exclude", [])),
            " ".join(s["explain"].split()),
            " ".join(s["hint"].split()),
            s.get("fault", "self"),
            tuple(re.compile(p) for p in s.get("last_words", [])),
        )
        for s in raw
    )
    keywords = [str(k).lower() for k in data["keywords"]]
    gates = {k: tuple(i for i, s in enumerate(raw) if any(k in e.lower() for e in s["examples"])) for k in keywords}
    return Catalogue(tuple(k.encode() for k in keywords), signatures, gates)


@dataclass(frozen=True)
class Match:
    """A log line a signature matches: where, when, by or about which rank."""

    signature: Signature
    source: str  # path inside the record
    lineno: int
    stamp: str
    time: float  # seconds since the epoch; inf where the line has no timestamp
    text: str  # the line without its timestamp
    rank: int | None  # the rank that printed it, or the one a launcher line is about
    own: bool  # printed by that rank itself (not a launcher's line about it)
    host: str | None
    blame: tuple[int, ...]  # the ranks the message says are at fault
    frame: str | None  # "train.py:102": the job's own frame nearest above the error
    context: tuple[str, ...]

    def where(self) -> str:
        return f"{self.source}:{self.lineno} {self.stamp} {self.text[:400]}"


def _split(line: str) -> tuple[str, str, float]:
    stamp = _STAMP.match(line)
    if not stamp:
        return "", line, math.inf
    when = dt.datetime.fromisoformat(stamp.group(1).replace("Z", "+00:00")).timestamp()
    return stamp.group(1), line[stamp.end() :], when


def _frame_above(window: bytes, lineno: int, prefix: str) -> tuple[str | None, tuple[str, ...]]:
    """The job's own frame nearest above an error in its traceback, with its source line;
    ``prefix`` ("[rank3]:") keeps a host log, where ranks interleave, to the error's rank."""
    lines = window.decode("utf-8", "replace").split("\n")
    for back in range(1, min(len(lines), 120)):
        text = _split(lines[-back - 1])[1]
        if prefix and not text.startswith(prefix):
            continue
        if "Traceback (most recent call last)" in text:
            break
        frame = _FRAME.search(text)
        if frame and not _LIBRARY.search(frame["path"]):
            code = _split(lines[-back])[1].strip() if back > 1 else ""
            shown = [f"line {lineno - back}: {text.strip()}"] + (
                [] if not code or _FRAME.search(code) else [f"line {lineno - back + 1}: {code}"]
            )
            return f"{frame['path'].rsplit('/', 1)[-1]}:{frame['line']}", tuple(shown)
    return None, ()


Hit = tuple[int, str, Signature, re.Match[str], str | None, tuple[str, ...]]


def scan(path: Path, cat: Catalogue) -> Iterator[Hit]:
    """Every line of ``path`` a signature matches: (line number, line, signature, match, frame,
    context), reading ``CHUNK`` bytes at a time and decoding only lines that hold a keyword."""
    base, carry, tail = 1, b"", b""
    with path.open("rb") as handle:
        while True:
            data = handle.read(CHUNK)
            buffer = carry + data
            end = buffer.rfind(b"\n") + 1 if data else len(buffer)
            block, carry = buffer[:end], buffer[end:]
            low, starts = block.lower(), set()
            for keyword in cat.keywords:
                at = low.find(keyword)
                while at >= 0:
                    starts.add(low.rfind(b"\n", 0, at) + 1)
                    stop = low.find(b"\n", at)
                    at = low.find(keyword, stop) if stop >= 0 else -1
            del low
            lineno, pos = base, 0
            for start in sorted(starts):
                lineno, pos = lineno + block.count(b"\n", pos, start), start
                stop = block.find(b"\n", start)
                line = block[start : stop if stop >= 0 else len(block)].decode("utf-8", "replace").rstrip("\r")
                above = (
                    block[block.rfind(b"\n", 0, start - 1) + 1 : start]
                    if start
                    else tail[tail.rfind(b"\n", 0, -1) + 1 :]
                )
                if b'File "' in above and _FRAME.search(above.decode("utf-8", "replace")):
                    continue  # the source line a traceback shows under a frame, not an error
                text = _split(line)[1]
                if hit := cat.classify(text):
                    before = (tail + block[:start] if start < LOOKBACK else block[start - LOOKBACK : start])[-LOOKBACK:]
                    prefix = _RANK_PREFIX.match(text)
                    signature = hit[0]
                    if signature.id == "python-exception":
                        signature = _raised_by_library(text, before, prefix.group(0) if prefix else "") or signature
                    yield (
                        lineno,
                        line,
                        signature,
                        hit[1],
                        *_frame_above(before, lineno, prefix.group(0) if prefix else ""),
                    )
            base = lineno + block.count(b"\n", pos)
            tail = (tail + block)[-LOOKBACK:] if len(block) < LOOKBACK else block[-LOOKBACK:]
            if not data:
                return


@dataclass(frozen=True)
class Timeline:
    """Every match in one record, earliest first, and the ranks that took part."""

    matches: tuple[Match, ...]
    hosts: dict[int, str | None]  # every known rank and its host
    last_lines: dict[int, str]  # per rank log, its last line


def timeline(record: RunRecord, cat: Catalogue | None = None) -> Timeline:
    """Rank logs, then host logs: the launchers' output (torchrun, bash, the SageMaker drivers)
    and the only output of a rank without a log of its own. A line a host log repeats from a rank
    log is dropped, so each error counts once."""
    cat = cat or catalogue()
    ranks = {int(r): v for r, v in record.manifest.ranks.items()}
    hosts: dict[int, str | None] = {r: v.host for r, v in ranks.items()}
    local = {
        (v.host, int(v.local_rank)): r
        for r, v in ranks.items()  # str in the local rung's records
        if v.local_rank is not None and str(v.local_rank).isdigit()
    }
    matches: list[Match] = []
    last: dict[int, str] = {}
    for rank, path in record.rank_logs().items():
        hosts.setdefault(rank, None)
        last[rank] = f"{path.relative_to(record.root).as_posix()}: {_last_line(path)}"
        matches += _matches(record, path, cat, rank, hosts[rank], local)
    seen = {m.text for m in matches}
    for host in record.hosts:
        if record.host_log(host).is_file():
            found = _matches(record, record.host_log(host), cat, None, host, local)
            matches += [m for m in found if m.text not in seen]
            if not found and host in record.manifest.failed_hosts():
                matches += _last_words(record, host, cat)
    return Timeline(tuple(sorted(matches, key=lambda m: m.time)), hosts, last)


def _last_words(record: RunRecord, host: str, cat: Catalogue) -> list[Match]:
    """A host that failed without printing an error: what its last line says about it."""
    path = record.host_log(host)
    line = _last_line(path)
    stamp, text, when = _split(line)
    for signature in cat.signatures:
        if signature.ends(text):
            lineno = sum(1 for _ in path.open("rb"))
            return [
                Match(
                    signature,
                    path.relative_to(record.root).as_posix(),
                    lineno,
                    stamp,
                    when,
                    text,
                    None,
                    False,
                    host,
                    (),
                    None,
                    (),
                )
            ]
    return []


def _last_line(path: Path) -> str:
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - 4096))
        lines = [x for x in handle.read().split(b"\n") if x.strip()]
    return lines[-1].decode("utf-8", "replace") if lines else ""


def _matches(
    record: RunRecord, path: Path, cat: Catalogue, rank: int | None, host: str | None, local: dict[tuple[Any, Any], int]
) -> list[Match]:
    out, source = [], path.relative_to(record.root).as_posix()
    for lineno, line, signature, found, frame, context in scan(path, cat):
        stamp, text, when = _split(line)
        prefix, about = _RANK_PREFIX.match(text), found.groupdict().get("local_rank")
        who = (
            rank
            if rank is not None
            else int(prefix.group(1))
            if prefix
            else local.get((host, int(about)))
            if about is not None
            else None
        )
        blame = tuple(int(b) for b in re.findall(r"\d+", found.groupdict().get("blame") or ""))
        out.append(
            Match(
                signature,
                source,
                lineno,
                stamp,
                when,
                text,
                who,
                rank is not None or bool(prefix),
                host,
                blame,
                frame,
                context,
            )
        )
    return out


def check_run(record: RunRecord, context: CheckContext) -> list[Finding]:
    """The errors of one run: the root (a failure; a note where the run succeeded anyway) and one
    note gathering the other ranks' and launchers' errors as its echoes."""
    return _judge(record, timeline(record))


def new_errors(baseline: RunRecord, candidate: RunRecord) -> list[str]:
    """Error lines, normalised, that the candidate printed and the baseline did not."""
    return [normalise(m.text) for m in _new(timeline(baseline), timeline(candidate))]


def compare(baseline: RunRecord, candidate: RunRecord) -> list[Finding]:
    """The candidate judged on its new errors only: an error both rungs print is no difference."""
    old, new = timeline(baseline), timeline(candidate)
    return _judge(candidate, Timeline(tuple(_new(old, new)), new.hosts, new.last_lines))


def _new(old: Timeline, new: Timeline) -> list[Match]:
    seen, out = {normalise(m.text) for m in old.matches}, []
    for match in new.matches:
        if (key := normalise(match.text)) not in seen:
            seen.add(key)
            out.append(match)
    return out


def _judge(record: RunRecord, tl: Timeline) -> list[Finding]:
    if not tl.matches:
        return []
    roots = [m for m in tl.matches if m.signature.role == "root"]
    first = (
        max((m for m in roots if m.time <= roots[0].time + TIE_S), key=lambda m: (m.signature.priority, -m.time))
        if roots
        else tl.matches[0]
    )
    rank, how, focus, extra = _suspect(first, roots, tl)
    sig, who, at = first.signature, _who(rank, first.host, tl), f" at {focus.frame}" if focus.frame else ""
    title, confidence = {
        "self": (f"{who} failed first{at}: {sig.title}", 0.9 if sig.priority >= 50 else 0.7),
        "named": (f"{who} is the rank at fault{at}: {sig.title}, as the other ranks' errors say", 0.9),
        "site": (f"{who} called a different collective{at}: {sig.title} on the other ranks", 0.6),
        "silent": (f"{who} stopped without an error: {sig.title} on {_who(first.rank, first.host, tl)}", 0.6),
    }[how]
    if sig.role == "echo":
        title, confidence = f"{title}; no rank printed a primary error", confidence / 2
    evidence = [
        focus.where(),
        *focus.context,
        *([first.where()] if focus is not first else []),
        *extra,
        f"why: {sig.explain}",
    ]
    findings = [
        Finding(
            kind="logs",
            severity="failure" if record.status != "succeeded" else "note",
            title=title,
            evidence=evidence,
            hint=sig.hint,
            cause="collective-mismatch" if how == "site" else sig.id,
            rank=rank,
            confidence=confidence,
        )
    ]
    echoes: dict[str, Match] = {}
    for match in tl.matches:
        if match.rank is None or match.rank not in (rank, first.rank):
            echoes.setdefault(_who(match.rank, match.host, tl), match)
    if echoes:
        ranks = _list({m.rank for m in echoes.values() if m.rank is not None})
        hosts = ", ".join(sorted({m.host or "?" for m in echoes.values() if m.rank is None}))
        on = " and ".join(x for x in (ranks and f"ranks {ranks}", hosts and f"the launcher on {hosts}") if x)
        findings.append(
            Finding(
                kind="logs",
                severity="note",
                title=f"errors on {on} follow from it (echoes)",
                evidence=[f"{w} [{m.signature.id}] {m.where()[:300]}" for w, m in list(echoes.items())[:12]],
                cause=findings[0].cause,
                confidence=0.3,
            )
        )
    return findings


def _suspect(first: Match, roots: list[Match], tl: Timeline) -> tuple[int | None, str, Match, list[str]]:
    """(rank at fault, how it was found, the match to show, more evidence). The rank that printed
    the first error, unless that error only says a peer never came (``fault: peer``) or every
    rank reports the same disagreement (``fault: odd``): then the rank the messages name, the one
    alone at another call site, or (for a peer) the one rank that printed nothing at all."""
    kind = first.signature.fault if first.signature.role == "root" else "peer"
    if kind == "self":
        return first.rank, "self", first, []
    alike = {m.rank: m for m in reversed(roots) if m.signature.fault == kind and m.rank is not None and m.own}
    votes = sorted(((sum(m.blame[:1] == (r,) for m in alike.values()), r) for r in tl.hosts), reverse=True)
    voters = sum(bool(m.blame) for m in alike.values())  # one side of a disagreement alone cannot tell
    if votes and votes[0][0] and (len(votes) == 1 or votes[0][0] > votes[1][0]) and (kind == "peer" or voters > 1):
        named = votes[0][1]
        by = _list({r for r, m in alike.items() if m.blame[:1] == (named,)})
        last = [] if named in alike else [f"rank {named}'s last line: {tl.last_lines.get(named)}"]
        return named, "named", alike.get(named, first), [f"named as at fault by ranks {by}", *last]
    sites: dict[str, list[int]] = {}
    for rank, match in alike.items():
        sites.setdefault(match.frame or "?", []).append(rank)
    groups = sorted(sites.values(), key=len)
    if len(groups) > 1 and len(groups[0]) == 1 and len(groups[1]) > 1 and "?" not in sites:
        odd = groups[0][0]
        return odd, "site", alike[odd], [f"ranks {_list(set(r))} at {f}" for f, r in sites.items() if r != [odd]]
    quiet = sorted(set(tl.hosts) - {m.rank for m in tl.matches if m.own})
    if kind == "peer" and len(quiet) == 1:
        return quiet[0], "silent", first, [f"rank {quiet[0]} printed no error; last: {tl.last_lines.get(quiet[0])}"]
    return first.rank, "self", first, [f"ranks {_list(set(quiet))} printed no error"] if quiet else []


def _who(rank: int | None, host: str | None, tl: Timeline) -> str:
    if rank is None:
        return host or "a process"
    return f"rank {rank}" + (f" ({tl.hosts[rank]})" if tl.hosts.get(rank) else "")


def _list(ranks: set[Any]) -> str:
    return ", ".join(str(r) for r in sorted(ranks))
