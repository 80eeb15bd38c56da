"""Probe transparency as a tested property: a job with the probe does exactly what it does
without it, on the ``local`` rung: same status and exit codes, same lines on its hosts' output
(timestamps and run-to-run values such as pids aside), same artifact bytes, and no failure of
the probe itself (``probe_errors`` in a process record).

The jobs (tests/data/probe_jobs/, none of them a scenario) exercise every hook: collectives,
point-to-point and object collectives, DataLoader (forked and spawned workers), optimizer,
``torch.save``, argparse, the audit hook on ``open``, multiprocessing children, the tee of a
rank's output (a helper with its own stdout and stderr, ``os.wait()`` for every child), signals.

The one difference allowed is the documented one (harness/probe/_harness_probe.py): a traceback
through a hooked call shows one frame of the probe; :func:`transparency.output_lines` leaves those
lines out. The comparison lives in tests/transparency.py, shared with tests/test_corpus.py.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest
from transparency import assert_transparent, output_lines, same_output

from harness.backends import get_backend
from harness.judge.verdict import judge
from harness.record.run_record import RunRecord
from harness.spec.job import load_job

pytestmark = pytest.mark.slow

JOBS = Path(__file__).resolve().parent / "data" / "probe_jobs"


def run_both(name: str, records: Path) -> tuple[RunRecord, RunRecord]:
    job = load_job(JOBS / name / "job.yaml")
    with_probe = get_backend("local").run(job, records / "on")
    without = get_backend("local", probe=False).run(job, records / "off")
    return with_probe, without


class _Logs:
    """Host logs alone, as output_lines reads them."""

    hosts = ["algo-1"]

    def __init__(self, path: Path, lines: list[str]) -> None:
        path.write_text("".join(f"2026-01-01T00:00:00.000Z {line}\n" for line in lines))
        self.path = path

    def host_log(self, host: str) -> Path:
        return self.path


def test_the_comparison_drops_only_the_probes_frames(tmp_path: Path) -> None:
    traceback = [
        "Traceback (most recent call last):",
        '  File "/opt/ml/code/train.py", line 3, in <module>',
        "    dist.all_reduce(t)",
        '  File "/x/harness/probe/_harness_probe.py", line 650, in collective',
        "    return function(*args, **kwargs)",
        "           ^^^^^^^^^^^^^^^^^^^^^^^^^",
        '  File "/x/torch/distributed/c10d_logger.py", line 81, in wrapper',
        "    return func(*args, **kwargs)",
        '[rank1]:   File "/x/_harness_probe.py", line 9, in hooked',
        "[rank1]:     result = function(*args, **kwargs)",
        "[rank1]: RuntimeError: boom",
    ]
    without = [
        line
        for line in traceback
        if "_harness_probe" not in line and "function(*args" not in line and "^^^" not in line
    ]
    on = output_lines(_Logs(tmp_path / "on.txt", traceback))  # type: ignore[arg-type]
    off = output_lines(_Logs(tmp_path / "off.txt", without))  # type: ignore[arg-type]
    assert on == off and sum(on.values()) == 6
    assert same_output(Counter(["a", "FP16 check.FP16 check."]), Counter(["a", "FP16 check.", "FP16 check."]))[0]
    assert not same_output(Counter(["lr=0.1"]), Counter(["lr=0.2"]))[0]
    assert not same_output(Counter(["a", "harness probe: oops"]), Counter(["a"]))[0]


def test_a_traceback_cut_short_by_the_launchers_signal_is_left_out_whole(tmp_path: Path) -> None:
    """CI's run of accelerate's notebook_launcher test: a rank that failed on purpose was stopped by
    the elastic agent's SIGTERM while it formatted its own traceback, in the run without the probe
    only. Such a traceback races; one that ends in the program's own error is compared."""
    own = ["Traceback (most recent call last):", '  File "/t.py", line 4, in f', "    fail()", "RuntimeError: even"]
    stopped = [
        "Process ForkProcess-10:",
        *own,
        "During handling of the above exception, another exception occurred:",
        "Traceback (most recent call last):",
        '  File "/x/torch/distributed/elastic/multiprocessing/api.py", line 86, in _terminate_process_handler',
        "torch.distributed.elastic.multiprocessing.api.SignalException: Process 7 got signal: 15",
    ]
    off = output_lines(_Logs(tmp_path / "off.txt", ["start", *stopped, "done"]))  # type: ignore[arg-type]
    assert off == Counter(["start", "done"])
    kept = output_lines(_Logs(tmp_path / "kept.txt", ["start", *own, "done"]))  # type: ignore[arg-type]
    assert sum(kept.values()) == 6 and kept["RuntimeError: even"] == 1


@pytest.mark.skipif(
    importlib.util.find_spec("accelerate") is None, reason="accelerate is not installed (pip install '.[corpus]')"
)
def test_accelerates_own_self_test_passes_with_the_probe(tmp_path: Path) -> None:
    """accelerate's DataLoaderDispatcher broadcasts ``[TensorInformation, False]``: the probe
    measured every element of a list whose first had a shape, raised into the job, and the
    verdict blamed a collective mismatch inside accelerate."""
    with_probe, without = run_both("accelerate_selftest", tmp_path)
    assert without.status == "succeeded", without.host_log("algo-1").read_text()[-3000:]
    assert with_probe.status == "succeeded", with_probe.host_log("algo-1").read_text()[-3000:]
    assert_transparent(with_probe, without)
    verdict = judge([with_probe])
    assert verdict.outcome == "nothing-compared", [(f.cause, f.title) for f in verdict.findings]
    events = with_probe.rank_events()
    ops = {e["op"] for evs in events.values() for e in evs if e["kind"] == "collective"}
    assert {"broadcast_object_list", "barrier"} <= ops
    assert "broadcast" in ops or "all_gather_into_tensor" in ops or "all_gather" in ops


def test_point_to_point_and_object_collectives(tmp_path: Path) -> None:
    with_probe, without = run_both("p2p_objects", tmp_path)
    assert with_probe.status == "succeeded", with_probe.host_log("algo-1").read_text()[-3000:]
    assert_transparent(with_probe, without)
    verdict = judge([with_probe])
    assert verdict.outcome == "nothing-compared", [(f.cause, f.title, f.evidence) for f in verdict.findings]
    events = with_probe.rank_events()
    ops = [e["op"] for e in events[1] if e["kind"] == "collective"]
    # one event per call the job made: an object collective's inner broadcasts are not counted
    assert ops.count("broadcast_object_list") == 1 and "broadcast" not in ops
    assert ops.count("batch_isend_irecv") == 1 and "isend" in ops  # the ring's own isend, not the batch's
    subgroup = [e for evs in events.values() for e in evs if e.get("group")]
    assert {e["group"] == [0, 1] for e in subgroup} == {True} and len(subgroup) == 2


def test_processes_of_its_own(tmp_path: Path) -> None:
    with_probe, without = run_both("own_processes", tmp_path)
    assert with_probe.status == "succeeded", with_probe.host_log("algo-1").read_text()[-3000:]
    assert_transparent(with_probe, without)
    lines = output_lines(without)
    assert lines["rank 0 helper stdout='helper out' stderr='helper err'"] == 1  # the helper's streams apart
    assert lines["rank 1 reaped [7] handler ran True"] == 1  # os.wait() never met the tee; SIGUSR1 chained
    processes = with_probe.processes()
    ranks = sorted(str(p["rank"]) for p in processes if p.get("rank") is not None)
    assert ranks == ["0", "1"], "only the two spawned ranks are ranks: no worker or helper takes one over"
    inherited = [p for p in processes if p.get("inherited_rank") is not None]
    assert inherited and all(p.get("rank") is None for p in inherited)
    assert {0, 1} <= set(with_probe.rank_logs())
    assert judge([with_probe]).outcome == "nothing-compared"


@pytest.mark.skipif(
    importlib.util.find_spec("lightning") is None, reason="lightning is not installed (pip install '.[corpus]')"
)
def test_lightning_launching_its_own_ranks(tmp_path: Path) -> None:
    """Lightning's DDP re-runs the script as its other ranks (subprocesses, LOCAL_RANK set): both
    run the entry point, both are ranks, nothing else is."""
    with_probe, without = run_both("lightning_ddp", tmp_path)
    assert with_probe.status == "succeeded", with_probe.host_log("algo-1").read_text()[-3000:]
    assert_transparent(with_probe, without)
    ranks = {str(p["rank"]): p for p in with_probe.processes() if p.get("rank") is not None}
    assert sorted(ranks) == ["0", "1"] and all(p.get("parsed_args") for p in ranks.values())
    assert judge([with_probe]).outcome == "nothing-compared"
