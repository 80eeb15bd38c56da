"""What changed in the environment between two records, most relevant first: versions of
Python, torch, CUDA, cuDNN and NCCL; GPUs and CPUs; ``/dev/shm`` and ulimits; packages; then
the relevant variables. Notes that explain a divergence, not divergences themselves."""

from __future__ import annotations

from typing import Any

from harness.judge.contract import changes
from harness.judge.findings import Finding
from harness.judge.protocol import CheckContext
from harness.record.run_record import RunRecord

_MAX_LINES = 25


def _fingerprint(record: RunRecord) -> dict[str, Any]:
    return record.read_json(f"hosts/{record.hosts[0]}/fingerprint.json") or {}


#: Variables the contract check already compares (harness.judge.contract), left out here.
_CONTRACT_ENV = ("SM_", "TRAINING_JOB", "MASTER_", "RANK", "LOCAL_RANK", "WORLD_SIZE")


def _changed(label: str, a: Any, b: Any) -> list[str]:
    return [] if a == b else changes(a, b, label)


def environment_changes(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Differences between two fingerprints, ordered by how likely they change training."""
    ta, tb = a.get("torch", {}), b.get("torch", {})
    lines = [*_changed("python", a.get("python"), b.get("python"))]
    for key in ("torch", "cuda", "cudnn", "nccl", "cuda_available", "gpus"):
        lines += _changed(key, ta.get(key), tb.get(key))
    for key in ("cpu_count", "cpu_affinity", "dev_shm_bytes", "machine"):
        lines += _changed(key, a.get(key), b.get(key))
    for name in sorted(set(a.get("ulimits", {})) | set(b.get("ulimits", {}))):
        lines += _changed(f"ulimit {name}", a.get("ulimits", {}).get(name), b.get("ulimits", {}).get(name))
    pa, pb = a.get("packages", {}), b.get("packages", {})
    for name in sorted(set(pa) | set(pb)):
        lines += _changed(f"package {name}", pa.get(name, "<absent>"), pb.get(name, "<absent>"))
    ea, eb = a.get("env", {}), b.get("env", {})
    for name in sorted(n for n in set(ea) | set(eb) if not n.startswith(_CONTRACT_ENV)):
        lines += _changed(f"env {name}", ea.get(name, "<unset>"), eb.get(name, "<unset>"))
    return lines


def compare(baseline: RunRecord, candidate: RunRecord, context: CheckContext) -> list[Finding]:
    findings = []
    a, b = _fingerprint(baseline), _fingerprint(candidate)
    if a and b:
        lines = environment_changes(a, b)
        if lines:
            shown = lines[:_MAX_LINES] + (
                [f"... and {len(lines) - _MAX_LINES} more"] if len(lines) > _MAX_LINES else []
            )
            findings.append(
                Finding(
                    kind="environment",
                    severity="note",
                    title=f"{len(lines)} environment differences on {candidate.rung}",
                    evidence=shown,
                    cause="environment",
                    confidence=0.3,
                )
            )
    facts_a, facts_b = baseline.manifest.rung_facts, candidate.manifest.rung_facts
    changed = [
        f"{k}: {facts_a.get(k)!r} -> {facts_b.get(k)!r}"
        for k in sorted(set(facts_a) | set(facts_b))
        if k != "work_dir" and facts_a.get(k) != facts_b.get(k)
    ]
    if changed:
        findings.append(
            Finding(
                kind="environment",
                severity="note",
                title=f"how {candidate.rung} differs from {baseline.rung}",
                evidence=changed[:_MAX_LINES],
                cause="rung-facts",
                confidence=0.2,
            )
        )
    return findings
