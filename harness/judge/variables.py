"""The environment variables the job read (the probe's ``env_reads`` in each process record),
tied to what went wrong: a variable whose value differs between two rungs (a scale set in the
user's shell, inherited on ``local``, absent in a container), or one the job read unset before
it failed (a SageMaker name the contract does not set for this job: ``SM_CHANNEL_TRAINING`` where
the channel is ``train``).

These findings explain a departure and never make one: they are ``corroborating``
(:func:`harness.judge.verdict.settle`), decisive only beside a failure or divergence of the same
record, notes otherwise. A variable that legitimately differs between rungs (``HOSTNAME``) in a
job at parity stays a note. The variables the SageMaker contract gives (``SM_*``, ``MASTER_*``,
``RANK``, ...) are compared by :mod:`harness.judge.contract`, not here, except the SageMaker names
the job read and the contract did not set.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from harness.judge.contract import RELEVANT
from harness.judge.findings import Finding
from harness.judge.protocol import CheckContext
from harness.record.run_record import RunRecord, log_text

#: Names compared elsewhere (the contract check), the harness's own, those torchrun's elastic
#: agent sets for its own machinery (an error file per attempt, the signals it forwards, its
#: store), and the topology it gives each worker: they differ with every launch, or with the
#: topology every rung above ``single`` changes by design, and say nothing about the job.
_NOT_HERE = (
    *RELEVANT,
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "ROLE_NAME",
    "HARNESS_",
    "TORCHELASTIC_",
)
_LIBRARY_PATH = re.compile(r".*[/\\](?:site-packages|dist-packages)[/\\]|.*[/\\]lib[/\\]python\d[\d.]*[/\\]")
_MAX_SHOWN = 20
_LOG_TAIL = 60
_UNSET = "<unset>"


@dataclass
class Read:
    """One name as a run read it: every value its processes saw (None: unset) and where."""

    values: set[str | None] = field(default_factory=set)
    at: str | None = None
    by_job: bool = False

    def add(self, entry: dict[str, Any]) -> None:
        value = entry.get("value") if entry.get("set") else None
        self.values.add(value if isinstance(value, str) or value is None else str(value))
        by_job = entry.get("by") == "job"
        if self.at is None or (by_job and not self.by_job):
            at = _short(entry.get("at"))
            if entry.get("by") != "job" and entry.get("user"):
                at = f"{at} (from {_short(entry.get('user'))})"
            self.at, self.by_job = at, by_job


def reads(record: RunRecord) -> dict[str, Read]:
    """Every name the record's processes read, whatever read it (the job's code or a library)."""
    found: dict[str, Read] = {}
    for process in record.processes():
        entries = process.get("env_reads")
        if not isinstance(entries, dict):
            continue
        for name, entry in entries.items():
            if isinstance(name, str) and isinstance(entry, dict):
                found.setdefault(name, Read()).add(entry)
    return found


def _environments(record: RunRecord, read: dict[str, Read]) -> list[dict[str, Any]]:
    """The environments the record's processes started with (redacted), to stand for a name the
    run did not read; none where its probe recorded no reads at all (an older record)."""
    if not read:
        return []
    return [p["env"] for p in record.processes() if isinstance(p.get("env"), dict)]


def _started_with(environments: list[dict[str, Any]], name: str) -> set[str | None] | None:
    values = {v if isinstance(v := env.get(name), str) else None for env in environments}
    return values or None


def _short(where: Any) -> str:
    """A reading line without the installation's prefix: ``torch/__init__.py:12``."""
    return _LIBRARY_PATH.sub("", str(where)) if where else "?"


def _shown(values: set[str | None]) -> str:
    return ", ".join(_UNSET if v is None else repr(v) for v in sorted(values, key=lambda v: (v is not None, v or "")))


def _compared(name: str) -> bool:
    return not name.startswith(_NOT_HERE)


def failure_text(record: RunRecord) -> str:
    """What the record says about its failure: the processes' exceptions, the hosts' failure
    reasons and the last lines every host printed."""
    parts = [str(p.get("exception") or "") for p in record.processes()]
    for host, result in record.manifest.hosts.items():
        parts.append(result.failure_reason or "")
        path = record.host_log(host)
        if path.is_file():
            lines = path.read_text(errors="replace").splitlines()[-_LOG_TAIL:]
            parts += [log_text(line) for line in lines]
    return "\n".join(parts)


def _named(names: Iterable[str], text: str) -> set[str]:
    return {n for n in names if re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", text)}


# ---- a pair: variables read with other values ---------------------------------------------------


def compare(baseline: RunRecord, candidate: RunRecord, context: CheckContext) -> list[Finding]:
    """Variables either run read whose values differ between the two records, the job's own
    reads first, with both values and where each was read."""
    a, b = reads(baseline), reads(candidate)
    env_a, env_b = _environments(baseline, a), _environments(candidate, b)
    rows: list[tuple[bool, str, set[str | None], set[str | None], str]] = []
    for name in sorted(n for n in set(a) | set(b) if _compared(n)):
        va = a[name].values if name in a else _started_with(env_a, name)
        vb = b[name].values if name in b else _started_with(env_b, name)
        if va is None or vb is None or va == vb:
            continue
        read = b[name] if name in b and (b[name].by_job or name not in a) else a[name]
        by_job = any(name in r and r[name].by_job for r in (a, b))
        rows.append((by_job, name, va, vb, read.at or "?"))
    if not rows:
        return []
    failed = candidate.status != "succeeded"
    named = _named([row[1] for row in rows], failure_text(candidate)) if failed else set()
    rows.sort(key=lambda row: (row[1] not in named, not row[0], row[1]))
    base, cand = baseline.rung, candidate.rung
    evidence = [
        f"{name}: {_shown(va)} on {base} -> {_shown(vb)} on {cand}; read {'by the job ' if job else ''}at {at}"
        + ("; named in the error" if name in named else "")
        for job, name, va, vb, at in rows[:_MAX_SHOWN]
    ]
    if len(rows) > _MAX_SHOWN:
        evidence.append(f"... and {len(rows) - _MAX_SHOWN} more")
    job, name, va, vb, at = rows[0]
    reader = "the job" if job else "a library"
    title = f"{name}, which {reader} reads, is {_shown(va)} on {base} and {_shown(vb)} on {cand}"
    if len(rows) > 1:  # e.g. a login shell's LOGNAME and USER, which getpass reads, unset in a container
        more = len(rows) - 1
        title += f"; {more} more variable{'s' if more > 1 else ''} read differ{'' if more > 1 else 's'}"
    return [
        Finding(
            kind="environment",
            severity="failure" if failed else "divergence",
            title=title,
            evidence=evidence,
            hint="a variable of the environment each rung starts the job in (the user's shell on local, the "
            "image on docker, the service on SageMaker): give it in the job's `environment` so that every rung "
            "and SageMaker set the same value, or stop reading it",
            cause="env-var-differs",
            confidence=0.8 if named else 0.45 if job else 0.25,
            corroborating=True,
        )
    ]


# ---- one failed record: variables it read unset ---------------------------------------------


def _sagemaker_names(record: RunRecord) -> set[str]:
    """The ``SM_`` names the contract set for the record's hosts (``received/env.json``)."""
    names: set[str] = set()
    for host in record.hosts:
        env = record.read_json(f"hosts/{host}/received/env.json")
        if isinstance(env, dict):
            names |= {k for k in env if isinstance(k, str) and k.startswith("SM_")}
    return names


def _related(name: str, given: set[str]) -> list[str]:
    """The set ``SM_`` names of the same family (``SM_CHANNEL_*`` for ``SM_CHANNEL_TRAINING``),
    else the closest ones."""
    family = "_".join(name.split("_")[:2]) + "_"
    same = sorted(n for n in given if n.startswith(family))
    return same[:12] or difflib.get_close_matches(name, sorted(given), n=5, cutoff=0.6)


def check_run(record: RunRecord, context: CheckContext) -> list[Finding]:
    """Where a run failed: the variables it read unset that its error names, the SageMaker names
    the job's code read that the contract does not set for this job (with those it does set), and
    the other names the job's own code read unset."""
    if record.status == "succeeded":
        return []
    unset = {
        name: read for name, read in reads(record).items() if read.values == {None} and not name.startswith("HARNESS_")
    }
    if not unset:
        return []
    # A library's own read the error names is shown, but decides nothing: torch's messages name
    # variables it reads unset as advice (``set TORCH_DISTRIBUTED_DEBUG=DETAIL``).
    mentioned = _named(unset, failure_text(record))
    named = {n for n in mentioned if unset[n].by_job or n.startswith("SM_")}
    given = _sagemaker_names(record)
    sagemaker = {n for n, r in unset.items() if n.startswith("SM_") and n not in given and (r.by_job or n in named)}
    others = {n for n, r in unset.items() if r.by_job and _compared(n)}
    if not named | sagemaker | others:
        return []  # a library's advice alone is no finding
    chosen = sorted(
        mentioned | sagemaker | others, key=lambda n: (n not in named, n not in sagemaker, n not in others, n)
    )
    evidence = []
    for name in chosen[:_MAX_SHOWN]:
        line = f"{name}: read unset at {unset[name].at}" + ("; named in the error" if name in mentioned else "")
        if name in sagemaker:
            related = _related(name, given)
            line += "; the contract sets " + (", ".join(related) if related else "no SM_ name like it")
        evidence.append(line)
    if len(chosen) > _MAX_SHOWN:
        evidence.append(f"... and {len(chosen) - _MAX_SHOWN} more")
    first = chosen[0]
    if first in sagemaker:
        related = _related(first, given)
        title = f"the job read {first}, which is unset on {record.rung}" + (
            f"; set: {', '.join(related)}" if related else ""
        )
        hint = (
            "SageMaker sets SM_CHANNEL_<NAME> for each channel of the job's inputs (SM_HP_<NAME> for each "
            "hyperparameter): read the name the job defines, or name the channel as the code expects"
        )
        cause = "sm-variable-unset"
    else:
        title = f"the job read {first}, which is unset on {record.rung}" + (
            f", and {len(chosen) - 1} more unset variables" if len(chosen) > 1 else ""
        )
        hint = "set it in the job's `environment`, or give the code a default that holds on every rung"
        cause = "env-var-unset"
    return [
        Finding(
            kind="environment",
            severity="failure",
            title=title,
            evidence=evidence,
            hint=hint,
            cause=cause,
            confidence=0.75 if first in named else 0.5 if first in sagemaker else 0.2,
            corroborating=True,
        )
    ]
