"""Did the candidate fail where the baseline did not? Evidence: the error its processes printed
(signature and line), exit codes, the failure file, and the last lines its failing host printed."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from harness.judge.findings import Finding
from harness.judge.logs import TIE_S, Match, timeline
from harness.judge.protocol import CheckContext
from harness.record.run_record import RunRecord, log_text

_TAIL = 8


def _tail(record: RunRecord, host: str) -> list[str]:
    path = record.host_log(host)
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").splitlines()
    return [log_text(line) for line in lines[-_TAIL:]]


def root_error(record: RunRecord, *, hosts: Collection[str] | None = None, texts: Iterable[str] = ()) -> Match | None:
    """The error the record's processes printed that explains a failure, from the logs' timeline
    (the catalogue of signatures): the earliest root error, near-ties broken by priority; among
    them first those holding one of ``texts`` (the exceptions the probe recorded), then those
    printed on ``hosts``. None where no line matches a signature."""
    roots = [m for m in timeline(record).matches if m.signature.role == "root"]
    wanted = [t.splitlines()[0][:120] for t in texts if t and t.strip()]
    preferred = (
        [m for m in roots if any(t in m.text for t in wanted)]
        or [m for m in roots if hosts is None or m.host in hosts]
        or roots
    )
    if not preferred:
        return None
    first = preferred[0]
    return max((m for m in preferred if m.time <= first.time + TIE_S), key=lambda m: (m.signature.priority, -m.time))


def printed(match: Match) -> list[str]:
    """Evidence lines of a printed error: where and what, then the job's frame above it."""
    return [f"printed: {match.where()}", *match.context]


def describe_failure(record: RunRecord) -> list[str]:
    """Evidence of a failed run: per failing host its exit code, failure reason and log tail."""
    evidence = [f"{record.rung}: status {record.status}"]
    for host, result in record.manifest.failed_hosts().items():
        evidence.append(f"{host} exited with {result.exit_code}")
        if result.failure_reason:
            evidence.append(f"{host} failure: {result.failure_reason.splitlines()[0][:200]}")
        evidence += [f"{host} | {line}" for line in _tail(record, host)]
    if record.manifest.error:
        evidence.append(f"harness error: {record.manifest.error}")
    return evidence


def compare(baseline: RunRecord, candidate: RunRecord, context: CheckContext) -> list[Finding]:
    if candidate.status == "succeeded" or baseline.status != "succeeded":
        return []
    failed = list(candidate.manifest.failed_hosts())
    error = root_error(candidate, hosts=failed or None)
    return [
        Finding(
            kind="failure",
            severity="failure",
            title=f"the job {candidate.status} on {candidate.rung} but succeeded on {baseline.rung}"
            + (f": {error.signature.title}" if error else ""),
            evidence=[*(printed(error) if error else []), *describe_failure(candidate)],
            hint=error.signature.hint if error else None,
            cause="job-failed",
            confidence=0.3,
        )
    ]
