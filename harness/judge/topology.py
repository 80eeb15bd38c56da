"""When two runs' numbers should match: a topology change legitimately changes them.

A job run as one process and the same job as N processes see their data in other batches (each
rank takes a share, the gradients are averaged over the global batch), so their loss curves and
final weights differ even when the job is correct. They are comparable only when the job says
how to keep the global batch equal (``batch_size_hyperparameter`` in the job spec: the
``single`` rung multiplies it by the world size), and then at equal samples seen. Otherwise a
check reports the numbers as a note, never as a divergence; what a topology change must not
change (the artifact set, checkpoint keys, shapes and dtypes, the parsed hyperparameters) is
compared as always.
"""

from __future__ import annotations

from harness.record.run_record import RunRecord


def world_size(record: RunRecord) -> int:
    return record.manifest.topology.world_size


def numbers_not_comparable(baseline: RunRecord, candidate: RunRecord) -> str | None:
    """Why the two runs' curves and weights need not match, or None when they should."""
    before, after = world_size(baseline), world_size(candidate)
    if before == after:
        return None
    if any(record.manifest.job.batch_size_hyperparameter for record in (baseline, candidate)):
        return None
    return (
        f"the world size changes ({before} -> {after}) and the job names no per-process batch size "
        "(batch_size_hyperparameter) that would keep the global batch equal"
    )
