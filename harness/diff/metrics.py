"""Loss curves aligned by step, with a tolerance that separates float noise from divergence.

Values match when ``|a - b| <= atol + rtol * |a|`` (numpy's ``isclose`` rule). CPU gloo runs are
bit-identical across topologies here, so the default tolerance only has to absorb the
printing precision of the job's own log lines; GPU rungs need the noise floor of a rung run
twice (pass it as ``rtol``/``atol``).
"""

from __future__ import annotations

from harness.diff.findings import Finding
from harness.record import RunRecord


def first_divergence(a: list[float], b: list[float], *, rtol: float, atol: float) -> int | None:
    for step, (x, y) in enumerate(zip(a, b, strict=False)):
        if abs(x - y) > atol + rtol * abs(x):
            return step
    return None


def check(baseline: RunRecord, candidate: RunRecord, *, rtol: float, atol: float) -> list[Finding]:
    findings = []
    source = baseline.hosts[0]
    theirs = candidate.metrics()
    for name, sources in baseline.metrics().items():
        a, b = sources.get(source, []), theirs.get(name, {}).get(source, [])
        if not a and not b:
            continue
        step = first_divergence(a, b, rtol=rtol, atol=atol)
        if step is not None:
            findings.append(
                Finding(
                    "metrics",
                    "divergence",
                    f"{name} diverges at step {step} on {candidate.rung}",
                    [
                        f"step {step}: {baseline.rung}={a[step]!r} {candidate.rung}={b[step]!r} "
                        f"(tolerance rtol={rtol}, atol={atol})"
                    ],
                    step=step,
                    cause="metric-divergence",
                    confidence=0.5,
                )
            )
        elif len(a) != len(b) and candidate.status == "succeeded":
            findings.append(
                Finding(
                    "metrics",
                    "divergence",
                    f"{name} has {len(b)} points on {candidate.rung}, {len(a)} on {baseline.rung}",
                    [f"{source}: the first {min(len(a), len(b))} points agree"],
                    step=min(len(a), len(b)),
                    cause="metric-length",
                    confidence=0.4,
                )
            )
    return findings
