"""What the job received, compared: the SageMaker variables and config files that differ between
two records. Notes, not divergences: they explain a divergence found by another check."""

from __future__ import annotations

from harness.diff.findings import Finding
from harness.record import RunRecord

#: Prefixes of the variables that decide how a distributed job runs, most relevant first.
RELEVANT = ("SM_", "MASTER_", "NCCL_", "GLOO_", "WORLD_SIZE", "RANK", "CUDA_", "OMP_", "TRAINING_JOB")


def check(baseline: RunRecord, candidate: RunRecord) -> list[Finding]:
    findings = []
    host = baseline.hosts[0]  # the first host speaks for the others
    a = baseline.read_json(f"hosts/{host}/received/env.json") or {}
    b = candidate.read_json(f"hosts/{host}/received/env.json") or {}
    keys = sorted(k for k in set(a) | set(b) if k.startswith(RELEVANT) and a.get(k) != b.get(k))
    if keys:
        findings.append(
            Finding(
                "contract",
                "note",
                f"{len(keys)} SageMaker-relevant variables differ on {host}",
                [f"{k}: {_short(a.get(k, '<unset>'))} -> {_short(b.get(k, '<unset>'))}" for k in keys[:20]],
            )
        )
    for name in ("hyperparameters.json", "resourceconfig.json", "inputdataconfig.json"):
        x = baseline.read_json(f"hosts/{host}/received/{name}")
        y = candidate.read_json(f"hosts/{host}/received/{name}")
        if x != y:
            findings.append(Finding("contract", "note", f"{name} differs on {host}", [f"{x!r} -> {y!r}"[:400]]))
    return findings


def _short(value: str, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
