"""pytest plugin: pre-merge parity checks of a training job (guide: docs/pre-merge.md).

Loaded by the ``pytest11`` entry point wherever harness is installed, or, where plugin autoload
is off, by ``pytest_plugins = ["harness.pytest_plugin"]`` in the root ``conftest.py``. A test asks
for a check in one of two ways:

* ``@pytest.mark.harness_parity(job, rungs=None, rtol=..., atol=..., tensor_rtol=..., tensor_atol=...)``:
  the ladder is climbed before the test's body runs, and the test fails with the verdict and its
  evidence unless the verdict is parity. The body (often empty) may take the ``harness_result``
  fixture to check more.
* the ``harness_ladder`` fixture, ``harness_ladder(job, rungs=None, rtol=..., ...)`` with the same
  arguments, which climbs and returns the :class:`~harness.ladder.climbing.LadderResult`;
  :func:`assert_parity` fails the test with the verdict. For jobs built in Python, or tests that
  expect a divergence.

``job`` is a :class:`~harness.spec.job.JobSpec` (or a spec of another workload) or a job file,
relative to pytest's rootdir.
``rtol``/``atol`` are the tolerance of metric curves, ``tensor_rtol``/``tensor_atol`` that of
checkpoint tensors (:class:`~harness.judge.protocol.Tolerance`). Rungs: the test's own, else
``--harness-rungs``, else the job's ``default_rungs`` (training's:
:data:`harness.ladder.climbing.DEFAULT_RUNGS`). A rung that cannot run here is
left out and reported as a :class:`RungSkippedWarning`; a test of which no rung can run, or of
which only one rung ran (nothing was compared), is skipped with every rung's reason, unless a rung
it names in ``require`` could not run: then it fails. Records go under ``--harness-record-dir``
(one directory per ladder, named after the test, and a ``summary.md`` for the session), else
under the test's ``tmp_path``.

PYTEST_DONT_REWRITE: this module has no asserts to rewrite, and ``-W error::harness.pytest_plugin.
RungSkippedWarning`` imports it before pytest registers it, which would warn that it cannot be.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import pytest

from harness.backends import parse_rung_list
from harness.errors import HarnessError, RequiredRungUnavailable, RungUnavailable, UsageError
from harness.judge.protocol import DEFAULT_ATOL, DEFAULT_RTOL, Tolerance
from harness.ladder.climbing import DEFAULT_RUNGS, LadderResult, climb
from harness.record.run_record import RunRecord
from harness.report import to_json, to_text
from harness.report.session_summary import ParityCheck, session_summary, verdict_words
from harness.spec.job_files import load_spec
from harness.spec.workload import Workload

__all__ = ["LadderRunner", "RungSkippedWarning", "assert_parity"]

MARKER = "harness_parity"
JobArg = Workload | str | os.PathLike[str]

_RESULT = pytest.StashKey[LadderResult]()


class RungSkippedWarning(UserWarning):
    """A rung of a parity check cannot run here; the check compared the rungs that could.
    ``-W error::harness.pytest_plugin.RungSkippedWarning`` makes a run insist on every rung."""


def _rung_list(text: str) -> list[str]:
    """``--harness-rungs`` as argparse type: comma-separated names of known rungs."""
    try:
        return parse_rung_list(text, where="--harness-rungs")
    except UsageError as exc:
        raise argparse.ArgumentTypeError(f"{exc} ({exc.hint})" if exc.hint else str(exc)) from None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "parity checks of training jobs (harness)")
    group.addoption(
        "--harness-rungs",
        type=_rung_list,
        metavar="RUNGS",
        default=None,
        help=f"comma-separated rungs for parity checks that name none (default: {','.join(DEFAULT_RUNGS)}); "
        "rungs that cannot run here are skipped with the reason",
    )
    group.addoption(
        "--harness-record-dir",
        type=Path,
        metavar="DIR",
        default=None,
        help="keep run records here, one directory per ladder named after the test, and write "
        "summary.md (default: each test's tmp_path)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(job, rungs=None, rtol={DEFAULT_RTOL}, atol={DEFAULT_ATOL}, tensor_rtol={DEFAULT_RTOL}, "
        f"tensor_atol={DEFAULT_ATOL}, require=()): climb the harness ladder "
        "with job (a job file relative to the rootdir, or a JobSpec) and fail unless the verdict is parity",
    )
    record_dir = config.getoption("harness_record_dir")
    if record_dir is not None:
        root = config.invocation_params.dir / record_dir
        config.pluginmanager.register(Recorder(root, _worker_id(config)), Recorder.name)


def pytest_report_header(config: pytest.Config) -> list[str]:
    rungs, record_dir = config.getoption("harness_rungs"), config.getoption("harness_record_dir")
    if rungs is None and record_dir is None:
        return []
    return [
        f"harness: rungs {','.join(rungs or DEFAULT_RUNGS)} (where a test names none); "
        f"records in {record_dir or 'tmp_path'}"
    ]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    """A marked test fails on its verdict here, in the call phase (reported FAILED, not ERROR),
    before its body runs; rungs left out are reported here too, so that ``-W error`` fails it."""
    result = item.stash.get(_RESULT, None)
    if result is not None:
        assert_parity(result)
        path, line, _ = item.reportinfo()
        _warn_skipped(result, str(path), (line or 0) + 1)


def assert_parity(result: LadderResult) -> None:
    """Fail the running test with the verdict, its evidence and where the records are, unless
    the ladder found parity."""
    __tracebackhide__ = True
    if result.verdict.outcome == "nothing-compared":  # neither passed nor failed: say so
        pytest.skip(
            f"nothing compared: only {', '.join(result.verdict.rungs)} ran ("
            + "; ".join(f"{rung}: {why}" for rung, why in result.skipped.items())
            + "); require=[...] makes a missing rung fail the test"
        )
    if result.verdict.outcome != "parity":
        _fail(to_text(result.verdict) + _where(result))


class LadderRunner:
    """What the ``harness_ladder`` fixture returns: call it to climb the ladder with a job."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request
        self._recorder: Recorder | None = request.config.pluginmanager.get_plugin(Recorder.name)

    def __call__(
        self,
        job: JobArg,
        rungs: Sequence[str] | str | None = None,
        *,
        rtol: float = DEFAULT_RTOL,
        atol: float = DEFAULT_ATOL,
        tensor_rtol: float = DEFAULT_RTOL,
        tensor_atol: float = DEFAULT_ATOL,
        require: Sequence[str] = (),
    ) -> LadderResult:
        """Run ``job`` on each rung and judge the records. Skips the test when no rung can run
        here; fails it, without a traceback, on a job file or rung that the harness rejects."""
        __tracebackhide__ = True
        result = self._climb(job, rungs, Tolerance(rtol, atol, tensor_rtol, tensor_atol), require)
        caller = sys._getframe(1)
        _warn_skipped(result, caller.f_code.co_filename, caller.f_lineno)
        return result

    def _climb(
        self, job: JobArg, rungs: Sequence[str] | str | None, tolerance: Tolerance, require: Sequence[str] = ()
    ) -> LadderResult:
        """The call without its :class:`RungSkippedWarning` (the marker warns in the call phase)."""
        __tracebackhide__ = True
        directory = self._directory()
        chosen: list[str] = []
        error: HarnessError | None = None
        try:
            spec = load_spec(self._request.config.rootpath / job) if isinstance(job, str | os.PathLike) else job
            chosen = self._rungs(rungs, spec)
            result = climb(spec, directory, rungs=chosen, tolerance=tolerance, require=require)
        except HarnessError as exc:  # said once, outside the handler: no chained traceback
            error = exc
        if isinstance(error, RungUnavailable) and not isinstance(error, RequiredRungUnavailable):
            self._keep(ParityCheck(self._request.node.nodeid, None, reason=error.message))
            pytest.skip(error.message)
        if error is not None:
            message = f"harness: {error.message}" + (f"\nhint: {error.hint}" if error.hint else "")
            self._keep(ParityCheck(self._request.node.nodeid, None, reason=message))
            _fail(message)
        records = result.records[0].root.parent if result.records else None
        self._keep(ParityCheck(self._request.node.nodeid, result.verdict, records))
        _write_ladder(directory, self._request.node.nodeid, spec.name, chosen, result, tolerance)
        return result

    def _rungs(self, rungs: Sequence[str] | str | None, spec: Workload) -> list[str]:
        if isinstance(rungs, str):
            rungs = rungs.split(",")
        if rungs:
            return list(rungs)
        return list(self._request.config.getoption("harness_rungs") or spec.default_rungs)

    def _directory(self) -> Path:
        """A directory for this ladder that no earlier ladder or session wrote (made by the first
        record, so a skipped ladder leaves none)."""
        if self._recorder is None:
            tmp_path: Path = self._request.getfixturevalue("tmp_path")
            base = tmp_path / "harness"
        else:
            base = self._recorder.root / _safe_name(self._request.node.nodeid)
        directory, number = base, 1
        while directory.exists():
            number += 1
            directory = base.with_name(f"{base.name}-{number}")
        return directory

    def _keep(self, check: ParityCheck) -> None:
        if self._recorder is not None:
            self._recorder.checks.append(check)


@pytest.fixture
def harness_ladder(request: pytest.FixtureRequest) -> LadderRunner:
    """Climb the harness ladder: ``harness_ladder(job, rungs=None, rtol=..., atol=..., tensor_rtol=...,
    tensor_atol=...)`` returns the LadderResult (verdict, records, skipped rungs); pair it with
    ``assert_parity``."""
    return LadderRunner(request)


@pytest.fixture
def harness_result(request: pytest.FixtureRequest, harness_ladder: LadderRunner) -> LadderResult:
    """The LadderResult of the test's ``@pytest.mark.harness_parity`` check."""
    marker = request.node.get_closest_marker(MARKER)
    if marker is None:
        _fail(f"harness_result needs the test marked @pytest.mark.{MARKER}(job, rungs=...)")
    try:
        job, rungs, tolerance, require = _marker_args(*marker.args, **marker.kwargs)
    except TypeError as exc:
        _fail(
            f"@pytest.mark.{MARKER}: {exc}; expected {MARKER}(job, rungs=None, rtol=..., atol=..., "
            "tensor_rtol=..., tensor_atol=..., require=...)"
        )
    result = harness_ladder._climb(job, rungs, tolerance, require)
    request.node.stash[_RESULT] = result
    return result


@pytest.fixture(autouse=True)
def _harness_parity_marker(request: pytest.FixtureRequest) -> None:
    """Climbs the ladder of a marked test, whether or not it asks for ``harness_result``."""
    if request.node.get_closest_marker(MARKER) is not None:
        request.getfixturevalue("harness_result")


def _marker_args(
    job: JobArg,
    rungs: Sequence[str] | str | None = None,
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    tensor_rtol: float = DEFAULT_RTOL,
    tensor_atol: float = DEFAULT_ATOL,
    require: Sequence[str] = (),
) -> tuple[JobArg, Sequence[str] | str | None, Tolerance, Sequence[str]]:
    return job, rungs, Tolerance(rtol, atol, tensor_rtol, tensor_atol), require


class Recorder:
    """Registered with ``--harness-record-dir``: keeps every ladder of the session and how pytest
    judged each test that climbed one, and writes ``summary.md`` (the Markdown a CI job posts on
    the pull request) when the session ends."""

    name = "harness-recorder"

    def __init__(self, root: Path, worker: str | None) -> None:
        self.root = root
        self.summary = root / (f"summary-{worker}.md" if worker else "summary.md")
        self.checks: list[ParityCheck] = []
        self.tests: dict[str, str] = {}  # node id -> the test's outcome as pytest reports it

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.tests[report.nodeid] = _test_outcome(report, self.tests.get(report.nodeid))

    def pytest_sessionfinish(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.summary.write_text(session_summary(self.checks, self.tests, self.summary.parent), encoding="utf-8")

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """``3 ladders of 3 tests (2 passed, 1 failed; verdicts: 1 diverged, 1 diverged (expected by
        the test), 1 parity)``: tests counted as pytest counted them, verdicts next to them."""
        count, tests = len(self.checks), list(dict.fromkeys(check.test for check in self.checks))
        outcomes = Counter(self.tests.get(test, "unfinished") for test in tests)
        words = [verdict_words(check, self.tests.get(check.test, "unfinished")) for check in self.checks]
        verdicts = Counter(w.replace(", expected by the test", " (expected by the test)") for w in words)
        terminalreporter.write_sep("-", "harness")
        terminalreporter.write_line(
            f"{count} ladder{'s' * (count != 1)} of {len(tests)} test{'s' * (len(tests) != 1)} ("
            + ", ".join(f"{outcomes[o]} {o}" for o in _TEST_OUTCOMES if outcomes[o])
            + "; verdicts: "
            + ", ".join(f"{n} {words}" for words, n in sorted(verdicts.items()))
            + f"): records and {self.summary.name} in {self.root}"
        )


_TEST_OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "unfinished")


def _test_outcome(report: pytest.TestReport, before: str | None) -> str:
    """A test's outcome so far, as pytest's own summary counts it, from its setup, call and
    teardown reports: a failed setup or teardown is an ``error``, a skip in setup ``skipped``."""
    if report.when == "call":
        if hasattr(report, "wasxfail"):
            return "xfailed" if report.skipped else "xpassed"
        return report.outcome
    if report.failed:
        return before if before in ("failed", "error") else "error"
    if report.skipped:
        return "xfailed" if hasattr(report, "wasxfail") else "skipped"
    return before or "unfinished"


def _write_ladder(
    directory: Path, test: str, job: str, rungs: list[str], result: LadderResult, tolerance: Tolerance
) -> None:
    """``verdict.json`` (the report of `harness ladder --json`) and ``ladder.json``: which test
    climbed, its records in ladder order, and the two that decided the verdict with the tolerances
    (what `harness diff A B --rtol --atol --tensor-rtol --tensor-atol` takes to render the report
    again)."""
    (directory / "verdict.json").write_text(to_json(result.verdict) + "\n", encoding="utf-8")
    ladder = {
        "test": test,
        "job": job,
        "requested_rungs": rungs,
        "outcome": result.verdict.outcome,
        "records": [record.root.name for record in result.records],
        "skipped": result.skipped,
        "compare": [record.root.name for record in _decisive_pair(result)],
        "rtol": tolerance.metric_rtol,
        "atol": tolerance.metric_atol,
        "tensor_rtol": tolerance.tensor_rtol,
        "tensor_atol": tolerance.tensor_atol,
    }
    (directory / "ladder.json").write_text(json.dumps(ladder, indent=2) + "\n", encoding="utf-8")


def _decisive_pair(result: LadderResult) -> tuple[RunRecord, RunRecord]:
    """The records the verdict rests on: the rung that departs and the one below it; the bottom
    record twice when it failed itself; the bottom and the top at parity."""
    records, verdict = result.records, result.verdict
    if verdict.outcome == "parity":
        return records[0], records[-1]
    for below, above in zip(records, records[1:], strict=False):
        if (below.rung, above.rung) == (verdict.baseline_rung, verdict.first_rung):
            return below, above
    return records[0], records[0]


def _warn_skipped(result: LadderResult, filename: str, line: int) -> None:
    """One :class:`RungSkippedWarning` per rung left out, at the test's line; a readable failure
    where ``-W error`` turns it into an error."""
    __tracebackhide__ = True
    for rung, reason in result.skipped.items():
        try:
            warnings.warn_explicit(f"rung {rung} skipped: {reason}", RungSkippedWarning, filename, line)
        except RungSkippedWarning as exc:
            error = str(exc)
            break
    else:
        return
    _fail(f"{error} (RungSkippedWarning is an error in this run: every rung must run)")


def _where(result: LadderResult) -> str:
    return f"\nrecords: {result.records[0].root.parent}" if result.records else ""


def _safe_name(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", nodeid).strip("-")[:150] or "test"


def _worker_id(config: pytest.Config) -> str | None:
    """pytest-xdist's worker id, so that workers write summaries of their own."""
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput else None


def _fail(message: str) -> NoReturn:
    __tracebackhide__ = True
    pytest.fail(message, pytrace=False)
