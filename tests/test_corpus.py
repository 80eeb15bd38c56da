"""The corpus (tests/data/corpus/): training programs written by others, shipped in PyPI packages
(accelerate, Lightning, transformers, PyTorch-Ignite, TorchMetrics, torch itself) and started
through a thin entry point of ours, under every launcher a SageMaker user reaches for. For each
job, one test:

1. climbs the ladder local -> docker -> sagemaker-local once: a correct program comes out
   PARITY, a program with a real defect under its launch mode fails on ``local`` with the cause
   its ``corpus.yaml`` names (a false alarm on a correct program is a harness defect);
2. runs it on ``local`` without the probe and compares with the ladder's ``local`` record
   (tests/transparency.py): same status, exit codes, output lines, artifact bytes (but a file
   ``corpus.yaml`` lists under ``run_unique``: one the program writes anew on every run; and
   lines that race from run to run, :data:`VARIES` and the job's own ``varies``); a program that
   fails must fail alike (:func:`assert_fails_alike`).

Each job's ``src/requirements.txt`` names the pinned packages it needs (the container images have
only torch): every rung installs it, the container rungs offline from a wheelhouse the host made.
The results are printed as a table at the end of the session (and written as Markdown to
``$HARNESS_CORPUS_TABLE`` when set).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from transparency import artifact_hashes, assert_transparent, output_lines, probe_errors

from harness.backends import get_backend
from harness.judge import replay
from harness.judge.protocol import CheckContext
from harness.ladder.climbing import climb, replay_in_one_process
from harness.record.run_record import RunRecord
from harness.report import to_text
from harness.runtime.requirements import ensure_local_environment
from harness.spec.job import load_job

CORPUS = Path(__file__).resolve().parent / "data" / "corpus"
JOBS = sorted(path.parent for path in CORPUS.glob("*/corpus.yaml"))
RUNGS = ("local", "docker", "sagemaker-local")
#: Lines launchers print a different number of times from run to run, probe or not: c10d's
#: warning for each TCP store connection whose peer address has no name (the local rung's
#: bridge addresses), one per connection attempt, retries included; and, across hosts, the store
#: client that finds the store gone as torchrun's agents leave (the master host's agent closes it
#: first: a warning with its C++ stack, and the agent's "Error waiting on exit barrier" with its
#: traceback, in a job that succeeds either way).
VARIES = (
    re.compile(r"\[c10d\] The hostname of the client socket cannot be retrieved"),
    re.compile(r"\[c10d\] recvValueWithTimeout failed on SocketImpl.*Connection was likely closed"),
    re.compile(r"^Exception raised from recvBytes at "),
    re.compile(r"^frame #\d+: |^<omitting python frames>$"),
    re.compile(r"^E\d{4} [\d:.]+ \d+ torch/distributed/elastic/agent/server/api\.py:\d+\] "),
)
#: The first line of an exception (``ValueError: ...``), a rank's ``[rankN]:`` prefix aside.
_EXCEPTION = re.compile(
    r"^(?:\[rank\d+\]:\s*)?(?P<line>(?:[A-Za-z_][\w]*\.)*(?P<name>[A-Za-z_]\w*(?:Error|Exception)):.*)$"
)
#: What launchers raise when a rank failed or they were stopped: an echo of the job's error,
#: raised by whichever host or rank was first, which races.
_LAUNCHERS = frozenset(
    ("SignalException", "ChildFailedError", "CalledProcessError", "ProcessExitedException", "ProcessRaisedException")
)


@dataclass
class Row:
    job: str
    program: str
    launcher: str
    rungs: str
    verdict: str
    transparent: str
    seconds: float
    replay: str = "not replayable"


class CorpusTable:
    """A pytest plugin the first corpus test registers: one row per job, shown in the terminal
    summary (and written to ``$HARNESS_CORPUS_TABLE`` as Markdown)."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def markdown(self) -> str:
        head = "| job | program | launcher | rungs | verdict | probe on/off equal | replay in one process | seconds |"
        lines = [head, "|---|---|---|---|---|---|---|---|"]
        for r in sorted(self.rows, key=lambda row: row.job):
            lines.append(
                f"| {r.job} | {r.program} | {r.launcher} | {r.rungs} | {r.verdict} | {r.transparent} "
                f"| {r.replay} | {r.seconds:.0f} |"
            )
        return "\n".join(lines) + "\n"

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.rows:
            return
        terminalreporter.write_sep("-", "corpus")
        for line in self.markdown().splitlines():
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"corpus total: {sum(r.seconds for r in self.rows):.0f} s")
        target = os.environ.get("HARNESS_CORPUS_TABLE")
        if target:
            Path(target).write_text(self.markdown(), encoding="utf-8")


@pytest.fixture(scope="module")
def table(request: pytest.FixtureRequest) -> CorpusTable:
    manager = request.config.pluginmanager
    found = manager.get_plugin("harness-corpus-table")
    if found is None:
        found = CorpusTable()
        manager.register(found, "harness-corpus-table")
    assert isinstance(found, CorpusTable)
    return found


def _about(directory: Path) -> dict[str, Any]:
    about = yaml.safe_load((directory / "corpus.yaml").read_text())
    assert isinstance(about, dict)
    return about


def errors_printed(record: RunRecord) -> set[str]:
    """The distinct exception lines the job's processes printed (normalised), launchers' own
    echoes of them left out."""
    found = set()
    for line in output_lines(record):
        match = _EXCEPTION.match(line)
        if match and match["name"] not in _LAUNCHERS:
            found.add(match["line"])
    return found


def assert_fails_alike(with_probe: RunRecord, without: RunRecord, run_unique: list[str]) -> None:
    """A job that fails, with and without the probe: the same status, the same hosts failing and
    the same errors printed, the same artifacts. Which rank or host fails first races (the others
    are then stopped: exit 1 or -15, a SIGTERM traceback or none), so exit codes and launcher
    reports are not compared line for line."""
    assert with_probe.status == without.status

    def failed(record: RunRecord) -> set[str]:
        return {host for host, result in record.manifest.hosts.items() if result.exit_code != 0}

    assert failed(with_probe) == failed(without)
    errors = errors_printed(with_probe)
    assert errors == errors_printed(without)
    assert errors or with_probe.status != "failed", "a failed job printed no error"
    assert artifact_hashes(with_probe, run_unique) == artifact_hashes(without, run_unique)
    assert not probe_errors(with_probe)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def assert_installed_offline(record: RunRecord, requirements: Path) -> None:
    """A container rung installed the job's pinned packages from the host's wheelhouse (pip
    offline, the wheels' folder as its find-links), at the pinned versions."""
    facts = record.manifest.rung_facts.get("requirements", {})
    assert facts.get("wheelhouse"), facts
    installed = {_canonical(name): version for name, version in facts.get("installed", {}).items()}
    for line in requirements.read_text().splitlines():
        if line.strip():
            name, _, version = line.strip().partition("==")
            assert installed.get(_canonical(name)) == version, (record.rung, name, installed)
    log = "\n".join(record.host_log(host).read_text(errors="replace") for host in record.hosts)
    assert "Looking in links: /opt/" in log and "Looking in indexes" not in log, record.rung


def _tail(record: RunRecord) -> str:
    return "\n".join(record.host_log(h).read_text(errors="replace")[-3000:] for h in record.hosts)


@pytest.mark.corpus
@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.sagemaker_local
@pytest.mark.parametrize("directory", JOBS, ids=[p.name for p in JOBS])
def test_corpus_job(directory: Path, records: Path, table: CorpusTable) -> None:
    about = _about(directory)
    expect = about["expect"]
    job = load_job(directory / "job.yaml")
    started = time.monotonic()
    row = Row(directory.name, about["program"], about["launcher"], "", "", "not compared", 0.0)
    table.rows.append(row)
    try:
        # The run that builds the local environment of requirements.txt prints pip's output; the
        # runs compared below must both find it built.
        ensure_local_environment(job)
        result = climb(job, records / "ladder", rungs=RUNGS)
        ran = [record.rung for record in result.records]
        row.rungs = " -> ".join(ran) + "".join(f" (skipped {rung})" for rung in result.skipped)
        row.verdict = result.verdict.outcome + (
            f": {result.verdict.causes[0]}" if result.verdict.causes and result.verdict.outcome != "parity" else ""
        )
        local = result.records[0]
        assert local.rung == "local", result.skipped
        # Without the probe there is no hang detection: a job that hangs is compared with the
        # probe's hang detection out of the way, both stopped by max_run.
        with_probe = local
        if local.status == "hung":
            with_probe = get_backend("local", hang_after_s=job.max_run * 10).run(job, records / "on")
        without = get_backend("local", probe=False).run(job, records / "off")
        run_unique = list(about.get("run_unique", {}))
        varies = [*VARIES, *(re.compile(pattern) for pattern in about.get("varies", []))]
        try:
            if without.status == "succeeded":
                assert_transparent(with_probe, without, ignore=varies, run_unique=run_unique)
            else:
                assert_fails_alike(with_probe, without, run_unique)
        except AssertionError:
            row.transparent = "no"
            raise
        row.transparent = "yes" + (" (both stopped by max_run)" if with_probe is not local else "")

        report = to_text(result.verdict)
        # The differential replay of the distributed run in one process: on a correct program it
        # agrees, or says what it left out; never a divergence.
        if replay.replayable(local) and replay_in_one_process(local, job):
            said = replay.check_run(local, CheckContext())
            row.replay = "; ".join(f.title for f in said) or "nothing to compare"
            if expect["outcome"] == "parity":
                assert [f.cause for f in said if f.severity != "note"] == [], [f.title for f in said]
        if expect["outcome"] == "parity":
            assert local.status == "succeeded", _tail(local)
            wanted = "parity" if len(ran) > 1 else "nothing-compared"  # a container rung cannot run here
            assert result.verdict.outcome == wanted, report
            assert job.source_dir is not None
            requirements = job.source_dir / "requirements.txt"
            for record in result.records[1:]:
                if requirements.is_file():
                    assert_installed_offline(record, requirements)
        else:
            assert result.verdict.outcome == expect["outcome"], report
            assert result.verdict.causes[:1] == [expect["cause"]], report
            assert result.verdict.first_rung == expect["first_rung"], report
    finally:
        row.seconds = time.monotonic() - started


@pytest.mark.unit
def test_the_corpus_is_whole() -> None:
    """At least 12 jobs, each with its requirements pinned and a row in the README's table."""
    readme = (CORPUS / "README.md").read_text()
    assert len(JOBS) >= 12
    for directory in JOBS:
        job = load_job(directory / "job.yaml")
        assert job.source_dir is not None and job.name.startswith("corpus-")
        requirements = job.source_dir / "requirements.txt"
        if requirements.is_file():
            lines = [line for line in requirements.read_text().splitlines() if line.strip()]
            assert all("==" in line for line in lines), f"{requirements}: pin every package"
        assert f"`{directory.name}`" in readme, f"{directory.name} has no row in tests/data/corpus/README.md"
        about = _about(directory)
        assert about["expect"]["outcome"] in ("parity", "failed")


@pytest.mark.unit
def test_children_torch_multiprocessing_reported_to_their_parent_are_not_hidden(tmp_path: Path) -> None:
    """accelerate's notebook_launcher test: the elastic agent forks ranks (torch.multiprocessing)
    that fail on purpose, raises ChildFailedError in the parent, and the test expects it. That is
    no hidden failure; a multiprocessing.Process child that fails unseen still is."""
    from fake_records import make_record

    from harness.judge import ranks
    from harness.judge.protocol import CheckContext
    from harness.judge.verdict import judge

    parent = {"exit_code": 0}
    told = [{"exit_code": 1, "rank": str(r), "mp_target": "_wrap"} for r in range(2)]
    record = make_record(tmp_path, "local", processes=[parent, *told])
    assert judge([record]).outcome == "nothing-compared"
    (note,) = [f for f in ranks.check_run(record, CheckContext()) if f.cause == "child-failure-handled"]
    assert note.severity == "note" and len(note.evidence) == 2
    unseen = make_record(tmp_path, "local", processes=[parent, *told, {"exit_code": 1, "mp_target": "worker"}])
    verdict = judge([unseen])
    assert verdict.outcome == "failed" and verdict.causes[0] == "hidden-child-failure"
    assert "1 of its processes failed" in verdict.findings[0].title


@pytest.mark.unit
def test_sharded_parameters_are_no_drift(tmp_path: Path) -> None:
    """torch's FSDP2 (the torch_fsdp2_dcp job): each rank's parameters are its own shard, so their
    digests differ by design; the probe marks such steps ``sharded`` (it digests the local shard,
    DTensor.to_local(): ``.numpy()`` refused the DTensor, a probe error) and they are not compared.
    Replicas that differ still are."""
    from fake_records import make_record

    from harness.judge.verdict import judge

    def step(digest: str, **extra: Any) -> dict[str, Any]:
        return {"kind": "params", "step": 0, "sum": 1.0, "abs_sum": 1.0, "digest": digest, **extra}

    shards = {0: [step("a", sharded=True)], 1: [step("b", sharded=True)]}
    assert judge([make_record(tmp_path, "local", rank_events=shards)]).outcome == "nothing-compared"
    replicas = {0: [step("a")], 1: [step("b")]}
    assert judge([make_record(tmp_path, "local", rank_events=replicas)]).causes[:1] == ["parameter-drift"]
