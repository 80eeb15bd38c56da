"""Log analysis (``harness.judge.logs``) on logs printed by real torch processes.

The records under tests/data/logs/records/ were captured by tests/data/logs/capture.py: torchrun
over gloo (torch 2.13 CPU, this machine) and NCCL (torch 2.11, an H100), each failure a real one
(a rank calling another collective, a rank that never arrives, /dev/shm too small, NCCL without
a GPU, ...). The slow tests capture the CPU ones again with the torch installed here, so a torch
release that rewords its messages fails here, not in a user's verdict.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.judge import logs
from harness.judge.findings import Finding
from harness.judge.protocol import CheckContext
from harness.record.run_record import RunRecord

DATA = Path(__file__).resolve().parent / "data" / "logs"
RECORDS = DATA / "records"
CATALOGUE = yaml.safe_load((Path(logs.__file__).with_name("signatures.yaml")).read_text())
CONTEXT = CheckContext()

#: case: (cause, rank at fault, the job's frame in the title). Ranks are global; None: a host's launcher.
EXPECTED: dict[str, tuple[str, int | None, str | None]] = {
    "crash": ("python-exception", 3, "train.py:102"),
    "mismatch-op": ("collective-mismatch", 3, "train.py:104"),  # no DETAIL: rank 3 alone at another call site
    "mismatch-op-detail": ("collective-mismatch", 3, "train.py:104"),
    "mismatch-size": ("collective-mismatch", 0, None),  # gloo aborts rank 0 in C++: no Python frame
    "mismatch-size-detail": ("collective-mismatch", 3, "train.py:106"),
    "straggle": ("collective-timeout", 3, None),  # rank 3 sleeps: the others time out
    "straggle-detail": ("monitored-barrier-timeout", 3, None),
    "exit-early": ("peer-connection-lost", 3, None),
    "oom-cpu": ("out-of-memory", 1, "train.py:110"),
    "dl-killed": ("dataloader-worker-killed", 0, None),
    "nccl-cpu": ("nccl-without-cuda", 0, "train.py:81"),
    "unresolvable": ("name-resolution", None, None),
    "shm": ("shm-exhausted", 0, None),
    "shm-bus": ("shm-exhausted", 0, None),
    "perm": ("permission-denied", 0, "train.py:75"),
    "no-python": ("image-without-python", None, None),
    "gpu-nccl-no-gpu": ("nccl-without-cuda", 0, "train.py:81"),
    "gpu-cuda-none": ("nccl-without-cuda", 0, "train.py:77"),
    "gpu-duplicate": ("nccl-duplicate-gpu", 0, None),
    "gpu-ifname": ("network-interface", 0, None),
    "gpu-watchdog": ("nccl-watchdog-timeout", 0, None),
    "gpu-oom": ("out-of-memory", 0, "train.py:79"),
}


def record(case: str) -> RunRecord:
    return RunRecord.load(RECORDS / case)


def copy(case: str, tmp_path: Path, **manifest: Any) -> RunRecord:
    """A writable copy of a captured record, its manifest updated with ``manifest``."""
    root = Path(shutil.copytree(RECORDS / case, tmp_path / case))
    data = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**data, **manifest}))
    return RunRecord.load(root)


def root_finding(findings: list[Finding]) -> Finding:
    assert findings and findings[0].kind == "logs", findings
    return findings[0]


# ---- the catalogue -------------------------------------------------------------------------------

SIGNATURES = [pytest.param(s, id=s["id"]) for s in CATALOGUE["signatures"]]


@pytest.mark.parametrize("signature", SIGNATURES)
@pytest.mark.unit
def test_every_example_is_recognised_as_its_own_signature(signature: dict[str, Any]) -> None:
    keywords = [k.lower() for k in CATALOGUE["keywords"]]
    for example in signature["examples"]:
        assert any(k in example.lower() for k in keywords), f"no keyword in {example!r}: the scan would skip it"
        hit = logs.catalogue().classify(example)
        assert hit is not None and hit[0].id == signature["id"], (example, hit and hit[0].id)


@pytest.mark.parametrize("signature", SIGNATURES)
@pytest.mark.unit
def test_every_pattern_is_checked_against_a_real_example(signature: dict[str, Any]) -> None:
    for pattern in signature["patterns"]:
        assert any(re.search(pattern, e) for e in signature["examples"]), pattern


@pytest.mark.unit
def test_catalogue_is_well_formed() -> None:
    ids = [s["id"] for s in CATALOGUE["signatures"]]
    assert len(ids) == len(set(ids))
    for s in CATALOGUE["signatures"]:
        assert s["role"] in ("root", "echo") and s.get("fault", "self") in ("self", "peer", "odd"), s["id"]
        assert s["explain"].strip() and s["hint"].strip() and s["title"].strip(), s["id"]
    needed = {
        "collective-mismatch",
        "collective-timeout",
        "nccl-watchdog-timeout",
        "nccl-error",
        "nccl-duplicate-gpu",
        "network-interface",
        "nccl-without-cuda",
        "rendezvous-timeout",
        "name-resolution",
        "shm-exhausted",
        "out-of-memory",
        "killed",
        "image-without-python",
        "hyperparameter-parse",
        "python-exception",
        "dataloader-worker-killed",
        "permission-denied",
        "peer-connection-lost",
        "launcher-summary",
        "sigterm-of-survivors",
    }
    assert needed <= set(ids)


@pytest.mark.unit
def test_benign_lines_that_hold_keywords_are_not_errors() -> None:
    for line in [
        "found 8 CUDA devices, using cuda:0",
        "eval: 0 failed, 1024 passed",
        "Killed 0 stale workers",
        "[W1123 04:53:58.787749678 socket.cpp:207] [c10d] The hostname of the client socket cannot be "
        "retrieved. err=-3",
        "step=3 loss=0.25 error_rate=0.01",
    ]:
        assert logs.catalogue().classify(line) is None, line


# ---- the root of real failures ---------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(EXPECTED))
@pytest.mark.unit
def test_root_cause_of_a_captured_failure(case: str) -> None:
    cause, rank, frame = EXPECTED[case]
    run = record(case)
    finding = root_finding(logs.check_run(run, CONTEXT))
    assert (finding.cause, finding.rank) == (cause, rank), finding.to_dict()
    assert finding.severity == "failure" and finding.hint and finding.evidence[-1].startswith("why: ")
    assert re.match(r"(ranks/rank-\d+\.log|hosts/algo-\d/log\.txt):\d+ \d{4}-\d\d-\d\dT", finding.evidence[0])
    if frame:
        assert f"at {frame}" in finding.title
    if rank is not None:
        assert finding.title.startswith(f"rank {rank} ({run.manifest.ranks[str(rank)].host})")


@pytest.mark.unit
def test_collective_mismatch_is_that_ranks_fault_at_that_line_not_its_peers_connection_reset() -> None:
    findings = logs.check_run(record("mismatch-size"), CONTEXT)
    root, echoes = findings
    assert root.cause == "collective-mismatch" and root.rank == 0
    assert re.match(r"ranks/rank-0\.log:6 [\d:T.-]+Z   what\(\):  \[enforce fail", root.evidence[0])
    assert "Is there a distributed collective mismatch" in root.evidence[0]
    assert "Connection reset by peer" not in " ".join(root.evidence)
    assert echoes.severity == "note" and echoes.cause == "collective-mismatch"
    assert any(e.startswith("rank 1 (algo-1) [peer-connection-lost] ranks/rank-1.log:17 ") for e in echoes.evidence)


@pytest.mark.unit
def test_with_detail_the_rank_in_the_other_collective_is_named_with_its_own_line() -> None:
    root = root_finding(logs.check_run(record("mismatch-op-detail"), CONTEXT))
    assert root.rank == 3 and root.cause == "collective-mismatch"
    assert root.evidence[0].startswith("ranks/rank-3.log:18 ") and "OpType=BROADCAST" in root.evidence[0]
    assert [logs.normalise(e) for e in root.evidence[1:3]] == [
        'line 10: [rank3]:   File "/tmp/<tmp>/code/train.py", line 104, in fault',
        "line 11: [rank3]:     dist.broadcast(grad, 0)",
    ]
    assert "named as at fault by ranks 0, 1, 2" in root.evidence


@pytest.mark.unit
def test_without_detail_the_rank_alone_at_another_call_site_is_named() -> None:
    root = root_finding(logs.check_run(record("mismatch-op"), CONTEXT))
    assert (root.rank, root.cause, root.confidence) == (3, "collective-mismatch", 0.6)
    assert "dist.broadcast(grad, 0)" in root.evidence[2] and "ranks 0, 1, 2 at train.py:91" in root.evidence


@pytest.mark.unit
def test_a_rank_that_never_arrives_is_named_not_the_ranks_that_timed_out() -> None:
    root = root_finding(logs.check_run(record("straggle"), CONTEXT))
    assert (root.rank, root.cause) == (3, "collective-timeout")
    assert "Timed out waiting 4000ms" in root.evidence[0] and re.match(r"ranks/rank-[012]\.log:15 ", root.evidence[0])
    assert any(
        e.startswith("rank 3 printed no error; last: ranks/rank-3.log: ") and "step=2" in e for e in root.evidence
    )
    detail = root_finding(logs.check_run(record("straggle-detail"), CONTEXT))
    assert detail.rank == 3 and "Rank 3 failed to pass monitoredBarrier" in detail.evidence[0]


@pytest.mark.unit
def test_peers_that_only_lost_their_connection_point_at_the_silent_rank() -> None:
    root = root_finding(logs.check_run(record("exit-early"), CONTEXT))
    assert root.rank == 3 and root.confidence < 0.5 and "no rank printed a primary error" in root.title


@pytest.mark.unit
def test_echoes_are_gathered_in_one_note() -> None:
    root, note = logs.check_run(record("crash"), CONTEXT)
    assert root.rank == 3 and 'raise ValueError("batch 3 has 17 columns, expected 16")' in root.evidence[2]
    assert (
        note.severity == "note"
        and note.title == "errors on ranks 0, 1, 2 and the launcher on algo-1, algo-2 follow from it (echoes)"
    )
    kinds = {re.search(r"\[([\w-]+)\]", e).group(1) for e in note.evidence}  # type: ignore[union-attr]
    assert kinds == {"peer-connection-lost", "sigterm-of-survivors"}


@pytest.mark.unit
def test_nccl_backend_on_a_cpu_machine() -> None:
    root = root_finding(logs.check_run(record("nccl-cpu"), CONTEXT))
    assert "Distributed package doesn't have NCCL built in" in root.evidence[0]
    assert "line 5: dist.init_process_group(backend, timeout=TIMEOUT)" in root.evidence


@pytest.mark.unit
def test_shared_memory_exhaustion() -> None:
    for case in ("shm", "shm-bus"):
        root = root_finding(logs.check_run(record(case), CONTEXT))
        assert root.cause == "shm-exhausted" and "shm-size" in (root.hint or "")


@pytest.mark.unit
def test_a_launcher_error_without_any_rank_is_the_hosts() -> None:
    root = root_finding(logs.check_run(record("no-python"), CONTEXT))
    assert root.title == "algo-1 failed first: image without python or pip"
    stamp = r"\d{4}-\d\d-\d\dT[\d:.]+Z"
    assert re.fullmatch(rf"hosts/algo-1/log\.txt:1 {stamp} bash: line 1: python3: command not found", root.evidence[0])


@pytest.mark.unit
def test_host_log_stands_in_for_a_missing_rank_log(tmp_path: Path) -> None:
    run = copy("crash", tmp_path)
    (run.root / "ranks" / "rank-3.log").unlink()
    root = root_finding(logs.check_run(run, CONTEXT))
    assert (root.rank, root.cause) == (3, "python-exception")
    assert root.evidence[0].startswith("hosts/algo-2/log.txt:") and "at train.py:102" in root.title


@pytest.mark.unit
def test_launcher_lines_are_attributed_through_the_manifests_local_ranks(tmp_path: Path) -> None:
    ranks = json.loads((RECORDS / "crash" / "manifest.json").read_text())["ranks"]
    as_strings = {r: {**v, "local_rank": str(v["local_rank"])} for r, v in ranks.items()}  # as the local rung writes
    for run in (record("crash"), copy("crash", tmp_path, ranks=as_strings)):
        timeline = logs.timeline(run)
        launcher = [m for m in timeline.matches if "failed (exitcode: 1) local_rank:" in m.text]
        assert {(m.host, m.rank, m.own) for m in launcher} == {("algo-1", 0, False), ("algo-2", 3, False)}


@pytest.mark.unit
def test_errors_of_a_run_that_succeeded_are_notes(tmp_path: Path) -> None:
    findings = logs.check_run(copy("crash", tmp_path, status="succeeded"), CONTEXT)
    assert findings and {f.severity for f in findings} == {"note"}


@pytest.mark.unit
def test_a_clean_run_has_no_findings() -> None:
    assert logs.check_run(record("success"), CONTEXT) == []


@pytest.mark.unit
def test_chunk_boundaries_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = ["crash", "mismatch-op-detail", "straggle", "shm-bus", "gpu-watchdog"]
    expected = {c: [f.to_dict() for f in logs.check_run(record(c), CONTEXT)] for c in cases}
    monkeypatch.setattr(logs, "CHUNK", 97)  # many chunks, lines split across them
    monkeypatch.setattr(logs, "LOOKBACK", 4096)
    for case in cases:
        assert [f.to_dict() for f in logs.check_run(record(case), CONTEXT)] == expected[case], case


@pytest.mark.unit
def test_lines_without_timestamp_sort_last(tmp_path: Path) -> None:
    (tmp_path / "ranks").mkdir()
    manifest = json.loads((RECORDS / "crash" / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "ranks": {}}))
    (tmp_path / "ranks" / "rank-0.log").write_text("ValueError: printed without a timestamp\n")
    (tmp_path / "ranks" / "rank-1.log").write_text("2026-11-23T05:00:00.000001Z KeyError: 'x'\n")
    assert root_finding(logs.check_run(RunRecord.load(tmp_path), CONTEXT)).rank == 1


# ---- normalisation and comparing two rungs -------------------------------------------------------


@pytest.mark.unit
def test_two_runs_differ_only_in_what_normalisation_removes() -> None:
    for rank in range(4):
        a = (RECORDS / "success" / "ranks" / f"rank-{rank}.log").read_text().splitlines()
        b = (RECORDS / "success-again" / "ranks" / f"rank-{rank}.log").read_text().splitlines()
        assert a != b  # times, pids and ports differ
        assert [logs.normalise(x) for x in a] == [logs.normalise(x) for x in b]
    assert logs.compare(record("success"), record("success-again")) == []
    assert logs.new_errors(record("success"), record("success-again")) == []


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (
            "2026-11-23T05:02:00.366005Z [rank0]: RuntimeError: Connection closed by peer [127.0.0.1]:35030.",
            "2026-11-24T11:00:00.000001Z [rank0]: RuntimeError: Connection closed by peer [10.0.2.15]:41000.",
        ),
        (
            "W1123 05:02:01.547000 7559 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 7566 "
            "closing signal SIGTERM",
            "W0101 00:00:00.000001 1 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 2 "
            "closing signal SIGTERM",
        ),
        (
            "[2026-11-23 05:14:53] vm:542:542 [0] init.cc:904 NCCL WARN Duplicate GPU detected : rank 0 and rank 1",
            "[2026-11-24 01:02:03] algo-2:77:78 [0] init.cc:904 NCCL WARN Duplicate GPU detected : rank 0 and rank 1",
        ),
        (
            "The IPv6 network addresses of (algo-9, 44135) cannot be retrieved",
            "The IPv6 network addresses of (algo-1-x7k2p, 7777) cannot be retrieved",
        ),
        ("connect to [fe80::1ff:fe23:4567:890a]:29500 at 0x7f3c47379b8d", "connect to [::1]:7777 at 0x55674fa40081"),
        ('File "/tmp/capture-6rj1bqgg/code/train.py", line 102', 'File "/tmp/tmpa8b2c3/code/train.py", line 102'),
        (
            "DataLoader worker (pid(s) 16849) exited unexpectedly; MASTER_PORT=29500",
            "DataLoader worker (pid(s) 3) exited unexpectedly; MASTER_PORT=7777",
        ),
    ],
)
@pytest.mark.unit
def test_normalise_removes_times_hosts_pids_ports_and_addresses(a: str, b: str) -> None:
    assert logs.normalise(a) == logs.normalise(b)


@pytest.mark.unit
def test_normalise_keeps_what_matters() -> None:
    line = "[rank3]: RuntimeError: 64 vs 4. step=12 loss=0.25 c10::Error std::bad_alloc"
    assert logs.normalise(line) == line


@pytest.mark.unit
def test_compare_reports_only_errors_new_on_the_candidate() -> None:
    findings = logs.compare(record("success"), record("crash"))
    assert root_finding(findings).rank == 3 and findings[0].cause == "python-exception"
    new = logs.new_errors(record("success"), record("crash"))
    assert new[0] == "[rank3]: ValueError: batch 3 has 17 columns, expected 16"
    assert (
        "[rank0]: RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection "
        "closed by peer [<ip>]:<port>. This is typically caused by a remote worker crashing. Check the logs of "
        "the remote worker before reporting an error. GLHF! 🏖️" in new
    )
    assert logs.compare(record("crash"), record("crash")) == []


# ---- the same failures, captured now from the torch installed here -----------------------------


def _capture_module() -> Any:
    spec = importlib.util.spec_from_file_location("capture", DATA / "capture.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _can_unshare() -> bool:
    return (
        os.geteuid() == 0
        and shutil.which("unshare") is not None
        and subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0
    )


def _cuda() -> bool:
    torch = pytest.importorskip("torch")
    return bool(torch.cuda.is_available())


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [
        "mismatch-size",
        "mismatch-op-detail",
        "straggle",
        "nccl-cpu",
        pytest.param("shm", marks=pytest.mark.skipif(not _can_unshare(), reason="needs root to give /dev/shm 64 MB")),
    ],
)
def test_live_capture_gives_the_same_root(case: str, tmp_path: Path) -> None:
    if case == "nccl-cpu" and _cuda():
        pytest.skip("torch sees a GPU here: NCCL initialises")
    run = RunRecord.load(_capture_module().capture(case, tmp_path))
    assert run.status == "failed", (run.root / "hosts" / "algo-1" / "log.txt").read_text()[-3000:]
    cause, rank, _ = EXPECTED[case]
    root = root_finding(logs.check_run(run, CONTEXT))
    assert root.cause == cause, root.to_dict()
    if case == "nccl-cpu":  # every rank fails alike, in no set order
        assert root.rank in (0, 1)
    else:
        assert root.rank == rank, root.to_dict()
