"""Artifacts compared file by file (names, sizes, sha256) in the merged ``model.tar.gz`` and
``output.tar.gz``. A missing or extra file is a divergence; different bytes are a note, because
float noise changes bytes too. A clash (a file written by several hosts) is a finding of its own."""

from __future__ import annotations

from harness.diff.findings import Finding
from harness.record import RunRecord


def check(baseline: RunRecord, candidate: RunRecord) -> list[Finding]:
    if candidate.status != "succeeded" or baseline.status != "succeeded":
        return []
    ours, theirs = baseline.read_json("artifacts/summary.json") or {}, candidate.read_json("artifacts/summary.json") or {}
    findings = []
    for archive in sorted(set(ours) | set(theirs)):
        a, b = ours.get(archive, {}).get("files", {}), theirs.get(archive, {}).get("files", {})
        missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        changed = sorted(n for n in set(a) & set(b) if a[n]["sha256"] != b[n]["sha256"])
        evidence = ([f"missing on {candidate.rung}: {n}" for n in missing]
                    + [f"extra on {candidate.rung}: {n}" for n in extra])
        if evidence:
            findings.append(Finding("artifacts", "divergence", f"{archive} differs on {candidate.rung}", evidence))
        if changed:  # bytes differ whenever floats do (GPU vs CPU); only values can tell divergence
            findings.append(Finding(
                "artifacts", "note", f"{len(changed)} files in {archive} differ byte-wise on {candidate.rung}",
                [f"{n}: {a[n]['size']} vs {b[n]['size']} bytes" for n in changed[:20]],
            ))
        for name, hosts in theirs.get(archive, {}).get("clashes", {}).items():
            findings.append(Finding(
                "artifacts", "note", f"{archive}: {name} written by several hosts on {candidate.rung}",
                [f"{name}: {', '.join(hosts)}"], hint="write model files from one rank, or give each host its own name",
            ))
    return findings
