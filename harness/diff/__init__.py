"""Comparing run records, one module per signal. Each check returns :class:`Finding` objects;
:mod:`harness.verdict` ranks them into a verdict. Checks read records only, never rungs.

:mod:`harness.diff.protocol` says what a check is, :mod:`harness.diff.checks` lists them."""

from harness.diff.findings import Finding
from harness.diff.protocol import CheckContext, PairCheck, RunCheck, Tolerance

__all__ = ["CheckContext", "Finding", "PairCheck", "RunCheck", "Tolerance"]
