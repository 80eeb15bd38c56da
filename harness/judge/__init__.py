"""Comparing run records, one module per signal. Each check returns :class:`Finding` objects;
:mod:`harness.judge.verdict` ranks them into a verdict. Checks read records only, never rungs.

:mod:`harness.judge.protocol` says what a check is, :mod:`harness.judge.checks` lists them."""

from harness.judge.findings import Finding
from harness.judge.protocol import CheckContext, PairCheck, RunCheck, Tolerance

__all__ = ["CheckContext", "Finding", "PairCheck", "RunCheck", "Tolerance"]
