"""Comparing run records, one module per signal. Each check returns :class:`Finding` objects;
:mod:`harness.verdict` ranks them into a verdict. Checks read records only, never rungs."""

from harness.diff.findings import Finding, check_run, compare

__all__ = ["Finding", "check_run", "compare"]
