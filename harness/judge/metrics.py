"""Loss curves aligned by step, with a tolerance that separates float noise from divergence.

Values match when ``|a - b| <= atol + rtol * |a|`` (numpy's ``isclose`` rule). CPU gloo runs are
bit-identical across topologies here, so the default tolerance only has to absorb the
printing precision of the job's own log lines; GPU rungs need the noise floor of a rung run
twice (``--rtol``/``--atol``, ``Tolerance.metric_rtol``/``metric_atol``; checkpoints have a
tolerance of their own). When the two runs see different numbers of samples per step (world
size or batch size changed), curves are compared at equal samples seen instead, and the change
of effective batch is reported: it changes the curve even for a correct job.
"""

from __future__ import annotations

from harness.judge.findings import Finding
from harness.judge.protocol import CheckContext
from harness.judge.topology import numbers_not_comparable, world_size
from harness.record.run_record import RunRecord


def first_divergence(a: list[float], b: list[float], *, rtol: float, atol: float) -> int | None:
    for step, (x, y) in enumerate(zip(a, b, strict=False)):
        if abs(x - y) > atol + rtol * abs(x):
            return step
    return None


def samples_per_step(record: RunRecord) -> int | None:
    """Samples all ranks consume per step, from the probe's first batch of every rank."""
    total = 0
    for events in record.iter_rank_events().values():
        first = next((event for event in events if event["kind"] == "batch"), None)
        if first is None or not first.get("size"):
            return None
        total += int(first["size"])
    return total or None


def _at_equal_samples(a: list[float], b: list[float], sa: int, sb: int) -> tuple[list[float], list[float], list[int]]:
    """Points of both curves taken where the two runs have seen the same number of samples."""
    pa, pb, xs, ys, seen = 0, 0, [], [], []
    while pa < len(a) and pb < len(b):
        seen_a, seen_b = (pa + 1) * sa, (pb + 1) * sb
        if seen_a == seen_b:
            xs.append(a[pa])
            ys.append(b[pb])
            seen.append(seen_a)
            pa, pb = pa + 1, pb + 1
        elif seen_a < seen_b:
            pa += 1
        else:
            pb += 1
    return xs, ys, seen


def compare(baseline: RunRecord, candidate: RunRecord, context: CheckContext) -> list[Finding]:
    """Each metric of every host and rank both records logged it on, under
    ``context.tolerance.metric_*``; when the topology changes, the first host's curve alone, at
    equal samples seen (other ranks' curves then legitimately differ)."""
    rtol, atol = context.tolerance.metric_rtol, context.tolerance.metric_atol
    reason = numbers_not_comparable(baseline, candidate)
    if reason is not None:
        return [
            Finding(
                kind="metrics",
                severity="note",
                title=f"loss curves of {baseline.rung} and {candidate.rung} are not compared",
                evidence=[reason],
                hint="set batch_size_hyperparameter in the job to compare them at an equal global batch",
                cause="topology-changes-numbers",
                confidence=0.2,
            )
        ]
    findings = []
    theirs = candidate.metrics()
    sa, sb = samples_per_step(baseline), samples_per_step(candidate)
    by_samples = sa is not None and sb is not None and sa != sb
    if by_samples:
        findings.append(
            Finding(
                kind="metrics",
                severity="note",
                title=f"{candidate.rung} consumes {sb} samples per step, {baseline.rung} {sa}",
                evidence=[
                    f"world size {world_size(baseline)} -> {world_size(candidate)}",
                    "curves compared at equal samples seen",
                ],
                hint="keep the global batch (per-rank batch x world size) and the learning rate together when the "
                "topology changes",
                cause="effective-batch-changed",
                confidence=0.6,
            )
        )
    ours_label, theirs_label = _labels(baseline, candidate)
    for name, sources in baseline.metrics().items():
        shared = [s for s in sources if s in theirs.get(name, {})] if not by_samples else [baseline.hosts[0]]
        diverging: list[tuple[int, str, list[float], list[float], list[int]]] = []
        short: list[tuple[str, int, int]] = []
        for source in shared or [baseline.hosts[0]]:
            a, b = sources.get(source, []), theirs.get(name, {}).get(source, [])
            if not a and not b:
                continue
            seen: list[int] = []
            if by_samples:
                a, b, seen = _at_equal_samples(a, b, sa, sb)  # type: ignore[arg-type]
            step = first_divergence(a, b, rtol=rtol, atol=atol)
            if step is not None:
                diverging.append((step, source, a, b, seen))
            elif len(a) != len(b) and candidate.status == "succeeded" and not by_samples:
                short.append((source, len(a), len(b)))
        if diverging:
            step, source, a, b, seen = min(diverging, key=lambda d: d[0])
            where = f"{seen[step]} samples seen" if by_samples else f"step {step}"
            others = [d[1] for d in diverging if d[1] != source]
            findings.append(
                Finding(
                    kind="metrics",
                    severity="divergence",
                    title=f"{name} diverges at {where} on {candidate.rung}",
                    evidence=[
                        f"{where}: {ours_label}={a[step]!r} {theirs_label}={b[step]!r} on {source} "
                        f"(tolerance rtol={rtol}, atol={atol})",
                        *([f"also diverging: {', '.join(others)}"] if others else []),
                    ],
                    step=step,
                    cause="metric-divergence",
                    confidence=0.5,
                )
            )
        elif short:
            source, na, nb = short[0]
            findings.append(
                Finding(
                    kind="metrics",
                    severity="divergence",
                    title=f"{name} has {nb} points on {candidate.rung}, {na} on {baseline.rung}",
                    evidence=[f"{source}: the first {min(na, nb)} points agree"],
                    step=min(na, nb),
                    cause="metric-length",
                    confidence=0.4,
                )
            )
    return findings


def _labels(baseline: RunRecord, candidate: RunRecord) -> tuple[str, str]:
    """The two rungs' names, numbered when a rung is compared with itself."""
    if baseline.rung == candidate.rung:
        return f"{baseline.rung} #1", f"{candidate.rung} #2"
    return baseline.rung, candidate.rung
