"""Did the candidate fail where the baseline did not? Evidence: exit codes, the failure file,
and the last lines its failing host printed."""

from __future__ import annotations

from harness.diff.findings import Finding
from harness.diff.protocol import CheckContext
from harness.record import RunRecord, log_text

_TAIL = 8


def _tail(record: RunRecord, host: str) -> list[str]:
    path = record.host_log(host)
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").splitlines()
    return [log_text(line) for line in lines[-_TAIL:]]


def describe_failure(record: RunRecord) -> list[str]:
    """Evidence of a failed run: per failing host its exit code, failure reason and log tail."""
    evidence = [f"{record.rung}: status {record.status}"]
    for host, result in record.manifest.get("hosts", {}).items():
        if result.get("exit_code") not in (0, None):
            evidence.append(f"{host} exited with {result['exit_code']}")
            if result.get("failure_reason"):
                evidence.append(f"{host} failure: {result['failure_reason'].splitlines()[0][:200]}")
            evidence += [f"{host} | {line}" for line in _tail(record, host)]
    if record.manifest.get("error"):
        evidence.append(f"harness error: {record.manifest['error']}")
    return evidence


def compare(baseline: RunRecord, candidate: RunRecord, context: CheckContext) -> list[Finding]:
    if candidate.status == "succeeded" or baseline.status != "succeeded":
        return []
    return [
        Finding(
            "failure",
            "failure",
            f"the job {candidate.status} on {candidate.rung} but succeeded on {baseline.rung}",
            describe_failure(candidate),
            cause="job-failed",
            confidence=0.3,
        )
    ]
