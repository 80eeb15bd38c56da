"""What the job received, compared: the SageMaker variables and config files that differ between
two records. Notes, not divergences: they explain a divergence found by another check."""

from __future__ import annotations

from harness.judge.findings import Finding
from harness.judge.protocol import CheckContext
from harness.record.run_record import RunRecord

#: Prefixes of the variables that decide how a distributed job runs, most relevant first.
RELEVANT = ("SM_", "MASTER_", "NCCL_", "GLOO_", "WORLD_SIZE", "RANK", "CUDA_", "OMP_", "TRAINING_JOB")


def compare(baseline: RunRecord, candidate: RunRecord, context: CheckContext) -> list[Finding]:
    findings = []
    host = baseline.hosts[0]  # the first host speaks for the others
    a = baseline.read_json(f"hosts/{host}/received/env.json") or {}
    b = candidate.read_json(f"hosts/{host}/received/env.json") or {}
    keys = sorted(k for k in set(a) | set(b) if k.startswith(RELEVANT) and a.get(k) != b.get(k))
    if keys:
        findings.append(
            Finding(
                kind="contract",
                severity="note",
                title=f"{len(keys)} SageMaker-relevant variables differ on {host}",
                evidence=[f"{k}: {_short(a.get(k, '<unset>'))} -> {_short(b.get(k, '<unset>'))}" for k in keys[:20]],
            )
        )
    for name in ("hyperparameters.json", "resourceconfig.json", "inputdataconfig.json"):
        x = baseline.read_json(f"hosts/{host}/received/{name}")
        y = candidate.read_json(f"hosts/{host}/received/{name}")
        if x != y:
            findings.append(
                Finding(
                    kind="contract", severity="note", title=f"{name} differs on {host}", evidence=changes(x, y)[:20]
                )
            )
    return findings + _channel_data(baseline, candidate)


def _channel_data(baseline: RunRecord, candidate: RunRecord) -> list[Finding]:
    """The files each host found in its channels (``received/channels.json``), where both rungs
    recorded them: a sharded channel, a changed prefix or a stale upload shows here."""
    evidence = []
    for host in baseline.hosts:
        a = baseline.read_json(f"hosts/{host}/received/channels.json")
        b = candidate.read_json(f"hosts/{host}/received/channels.json")
        if not isinstance(a, dict) or not isinstance(b, dict):
            continue
        for channel in sorted(set(a) | set(b)):
            x, y = (a.get(channel) or {}).get("files", {}), (b.get(channel) or {}).get("files", {})
            if x == y:
                continue
            only_a, only_b = sorted(set(x) - set(y)), sorted(set(y) - set(x))
            resized = sorted(n for n in set(x) & set(y) if x[n] != y[n])
            evidence.append(
                f"{host} {channel}: {len(x)} files, {sum(x.values())} bytes -> {len(y)} files, {sum(y.values())} bytes"
            )
            evidence += [f"  only on {baseline.rung}: {', '.join(only_a[:5])}"] if only_a else []
            evidence += [f"  only on {candidate.rung}: {', '.join(only_b[:5])}"] if only_b else []
            evidence += [f"  size differs: {', '.join(resized[:5])}"] if resized else []
    if not evidence:
        return []
    return [
        Finding(
            kind="contract",
            severity="note",
            title=f"the channels held different data on {candidate.rung}",
            evidence=evidence,
            hint="compare the channels' sources and distribution (ShardedByS3Key gives each host a share)",
            cause="channel-data-differs",
            confidence=0.4,
        )
    ]


def changes(a: object, b: object, where: str = "") -> list[str]:
    """What differs between two JSON values, one line per changed key (nested keys dotted),
    each value whole up to a length, so that no line is cut in the middle of a value."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            line
            for key in sorted(set(a) | set(b), key=str)
            if a.get(key, _UNSET) != b.get(key, _UNSET)
            for line in changes(a.get(key, _UNSET), b.get(key, _UNSET), f"{where}.{key}" if where else str(key))
        ]
    return [f"{where or 'value'}: {_short(a)} -> {_short(b)}"]


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()


def _short(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
