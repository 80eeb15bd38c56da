"""The within-run checks (harness.judge.ranks) on canned records: collective matching by process
group with point-to-point transfers paired across ranks, the script's parsed arguments on every
rank (never a launcher's), and failed processes named with what they printed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fake_records import make_record

from harness.judge.findings import Finding
from harness.judge.verdict import judge
from harness.record.run_record import RunRecord
from harness.spec.job import JobSpec

pytestmark = pytest.mark.unit

TORCHRUN = JobSpec(
    name="fake",
    source_dir="src",
    entry_point="train.py",
    distribution="torchrun",
    processes_per_host=2,
    hyperparameters={"epochs": 2, "normalize": False},
)


def call(op: str, shape: list[int] | None = None, line: int = 10, **fields: Any) -> dict[str, Any]:
    return {"kind": "collective", "op": op, "shapes": [shape] if shape else [], "caller": f"train.py:{line}", **fields}


def send(peer: int, size: int = 4, line: int = 20, op: str = "send") -> dict[str, Any]:
    return call(op, [size], line, dir="send", peer=peer, tag=0)


def recv(peer: int | None, size: int = 4, line: int = 30, op: str = "recv") -> dict[str, Any]:
    return call(op, [size], line, dir="recv", peer=peer, tag=0)


def findings(tmp: Path, events: dict[int, list[dict[str, Any]]], status: str = "succeeded") -> list[Finding]:
    return judge([make_record(tmp, "local", rank_events=events, status=status)]).findings  # type: ignore[arg-type]


def causes(found: list[Finding]) -> list[str | None]:
    return [f.cause for f in found if f.severity != "note"]


def test_rank_0_sending_to_every_rank_is_no_mismatch(tmp_path: Path) -> None:
    """The issue's correct job: rank 0 sends, the others receive; all three rungs succeeded and
    the verdict was FAILED with collective-mismatch."""
    events = {0: [send(1), send(2), call("barrier")], 1: [recv(0), call("barrier")], 2: [recv(0), call("barrier")]}
    assert causes(findings(tmp_path, events)) == []


def test_any_source_receives_take_whichever_send_came(tmp_path: Path) -> None:
    events = {
        0: [send(1), send(2), recv(None, 1, 28), recv(None, 1, 28), recv(2, 2, 34)],
        1: [recv(0), send(0, 1, 31)],
        2: [recv(0), send(0, 1, 31), send(0, 2, 34)],
    }
    assert causes(findings(tmp_path, events)) == []


def test_batched_rings_and_object_transfers_pair_up(tmp_path: Path) -> None:
    def ring(rank: int) -> dict[str, Any]:
        ops = [
            {"dir": "send", "peer": (rank + 1) % 3, "tag": 0, "shape": [3]},
            {"dir": "recv", "peer": (rank - 1) % 3, "tag": 0, "shape": [3]},
        ]
        return call("batch_isend_irecv", None, 40, ops=ops)

    events = {
        0: [ring(0), call("send_object_list", None, 50, dir="send", peer=1, tag=0, objects=1)],
        1: [ring(1), call("recv_object_list", None, 52, dir="recv", peer=0, tag=0, objects=1)],
        2: [ring(2)],
    }
    assert causes(findings(tmp_path, events)) == []


def test_a_receive_nobody_sends_is_the_cause_of_a_hang(tmp_path: Path) -> None:
    events = {0: [send(1)], 1: [recv(0), recv(0, line=33)]}
    top = findings(tmp_path, events, status="hung")[0]
    assert (top.cause, top.severity, top.rank) == ("p2p-mismatch", "failure", 1)
    assert "train.py:33" in top.title
    assert "rank 1 receives from rank 0 at train.py:33: nothing was sent to it" in top.evidence


def test_a_send_of_another_size_and_a_send_never_received(tmp_path: Path) -> None:
    events = {0: [send(1, 4), send(1, 8, line=21)], 1: [recv(0, 6)]}
    top = findings(tmp_path, events)[0]
    assert top.cause == "p2p-mismatch" and top.severity == "divergence"
    assert top.evidence == [
        "rank 0 sends 4 elements at train.py:20; rank 1 receives 6 at train.py:30",
        "rank 0 sends to rank 1 at train.py:21: rank 1 never receives it",
    ]


def test_collectives_of_a_subgroup_are_matched_among_its_members(tmp_path: Path) -> None:
    events = {
        0: [call("all_reduce", [2], 10, group=[0, 1]), call("all_reduce", [4], 12)],
        1: [call("all_reduce", [2], 10, group=[0, 1]), call("all_reduce", [4], 12)],
        2: [call("all_reduce", [4], 12)],
    }
    assert causes(findings(tmp_path, events)) == []
    events[1][0] = call("all_reduce", [3], 11, group=[0, 1])
    top = findings(tmp_path, events, status="failed")[0]
    assert top.cause == "collective-mismatch" and "process group [0, 1]" in top.title


def test_object_collectives_and_dtypes_are_part_of_the_match(tmp_path: Path) -> None:
    same = {r: [call("broadcast_object_list", None, 5, objects=2, dtypes=[])] for r in range(2)}
    assert causes(findings(tmp_path, same)) == []
    count = {
        0: [call("broadcast_object_list", None, 5, objects=2)],
        1: [call("broadcast_object_list", None, 6, objects=3)],
    }
    assert causes(findings(tmp_path, count, "failed"))[0] == "collective-mismatch"
    dtypes = {0: [call("all_reduce", [4], 5, dtypes=["float32"])], 1: [call("all_reduce", [4], 5, dtypes=["float64"])]}
    top = findings(tmp_path, dtypes, "failed")[0]
    assert top.cause == "collective-mismatch" and "float64" in " ".join(top.evidence)


def test_a_library_line_is_shown_with_the_jobs_own(tmp_path: Path) -> None:
    lib = "/venv/site-packages/accelerate/utils/operations.py:695"
    events = {r: [call("all_reduce", [4], 5)] for r in (0, 2)}
    events[1] = [{**call("broadcast", [4], 6), "caller": lib, "user": "train.py:9"}]
    top = findings(tmp_path, events, "failed")[0]
    assert top.cause == "collective-mismatch" and f"{lib} (called from train.py:9)" in top.title


def process(pid: int, argv: list[str], parsed: dict[str, Any] | None, rank: str | None = None) -> dict[str, Any]:
    return {"pid": pid, "argv": argv, "rank": rank, "parsed_args": parsed, "exit_code": 0}


PYTHON = "/venv/bin/python3"
TORCHRUN_PROCESS = process(
    10,
    [PYTHON, "/venv/bin/torchrun", "--nproc_per_node", "2", "train.py", "--normalize", "False"],
    {"nproc_per_node": "2", "training_script": "train.py", "epochs": None},
)


def test_the_scripts_arguments_are_read_on_every_rank_not_torchruns(tmp_path: Path) -> None:
    ranks = [
        process(
            11 + r,
            [PYTHON, "train.py", "--epochs", "2", "--normalize", "False"],
            {"epochs": 2, "normalize": True},
            str(r),
        )
        for r in range(2)
    ]
    verdict = judge([make_record(tmp_path, "local", processes=[TORCHRUN_PROCESS, *ranks], job=TORCHRUN)])
    top = verdict.findings[0]
    assert top.cause == "hyperparameter-type"
    assert top.evidence == ["normalize: the job gave False (bool), the script parsed True (bool) on ranks 0, 1"]


def test_a_rank_that_parsed_differently_is_named(tmp_path: Path) -> None:
    ranks = [
        process(11, [PYTHON, "train.py"], {"epochs": 2, "normalize": False}, "0"),
        process(12, [PYTHON, "train.py"], {"epochs": 2, "normalize": True}, "1"),
    ]
    top = judge([make_record(tmp_path, "local", processes=ranks, job=TORCHRUN)]).findings[0]
    assert top.evidence == ["normalize: the job gave False (bool), the script parsed True (bool) on rank 1"]


def test_python_m_torch_distributed_run_and_a_shell_entry_point(tmp_path: Path) -> None:
    module = process(
        10,
        [PYTHON, "/venv/lib/python3.11/site-packages/torch/distributed/run.py", "train.py"],
        {"normalize": "x", "epochs": None},
    )
    good = [
        process(11 + r, [PYTHON, "/opt/ml/code/train.py"], {"normalize": False, "epochs": 2}, str(r)) for r in range(2)
    ]
    assert (
        judge([make_record(tmp_path, "local", processes=[module, *good], job=TORCHRUN)]).outcome == "nothing-compared"
    )
    shell = TORCHRUN.model_copy(update={"entry_point": "run.sh"})
    bad = [
        process(21, [PYTHON, "/venv/bin/accelerate", "launch", "train.py"], {"normalize": False}),
        process(22, [PYTHON, "/opt/ml/code/train.py"], {"normalize": True}, "0"),
    ]
    top = judge([make_record(tmp_path, "local", processes=bad, job=shell)]).findings[0]
    assert top.cause == "hyperparameter-type" and top.evidence[0].endswith("on rank 0")


def _with_log(record: RunRecord, lines: list[str]) -> RunRecord:
    with record.host_log("algo-1").open("a") as handle:
        handle.writelines(f"2026-01-01T00:00:01.000Z {line}\n" for line in lines)
    return record


def test_the_first_finding_names_what_the_failed_children_printed(tmp_path: Path) -> None:
    children = [
        {
            "pid": 20 + i,
            "exit_code": 1,
            "mp_target": "worker",
            "exception": "RuntimeError: Distributed package doesn't have NCCL built in",
        }
        for i in range(2)
    ]
    record = _with_log(
        make_record(tmp_path, "local", processes=[{"pid": 10, "exit_code": 0}, *children]),
        [
            "Process Process-1:",
            "Traceback (most recent call last):",
            '  File "/opt/ml/code/train.py", line 11, in worker',
            '    dist.init_process_group("nccl")',
            "RuntimeError: Distributed package doesn't have NCCL built in",
            "training done",
        ],
    )
    verdict = judge([record])
    top = verdict.findings[0]
    assert verdict.outcome == "failed" and top.cause == "hidden-child-failure"
    assert top.title == "the job reported success but 2 of its processes failed: NCCL backend without CUDA"
    assert top.evidence[0].startswith("printed: hosts/algo-1/log.txt:") and "NCCL built in" in top.evidence[0]
    assert "train.py" in top.evidence[1] and top.hint and top.hint.startswith("Pick the backend")


def test_a_failed_rung_names_its_error(tmp_path: Path) -> None:
    base = make_record(tmp_path, "local", losses=[1.0, 0.5])
    failed = _with_log(
        make_record(tmp_path, "docker", losses=[1.0], status="failed"),
        ["RuntimeError: unable to allocate shared memory(shm) for file </torch_1_2_0>: No space left on device (28)"],
    )
    (finding,) = [f for f in judge([base, failed]).findings if f.cause == "job-failed"]
    assert finding.title.endswith(": shared memory (/dev/shm) exhausted")
    assert finding.evidence[0].startswith("printed: hosts/algo-1/log.txt:")


def made(ranks: list[int] | None, line: int = 40, t: float = 1.0, **fields: Any) -> dict[str, Any]:
    return {"kind": "new_group", "ranks": ranks, "caller": f"train.py:{line}", "t": t, **fields}


def test_each_node_creating_only_its_own_group_is_a_collective_mismatch(tmp_path: Path) -> None:
    """fault new_group_own_node_only: gloo sometimes pairs the two same-named groups anyway and
    the run succeeds; the ranks' creations differ all the same."""
    events = {r: [made([0, 1] if r < 2 else [2, 3]), call("broadcast", [512, 9], t=2.0)] for r in range(4)}
    (finding,) = [f for f in findings(tmp_path, events) if f.severity != "note"]
    assert finding.cause == "collective-mismatch" and finding.severity == "failure"
    assert finding.title == (
        "the ranks created different process groups at new_group #1 at train.py:40: "
        "ranks 0, 1 made group [0, 1]; ranks 2, 3 made group [2, 3]"
    )


def test_every_rank_creating_every_group_in_order_is_no_mismatch(tmp_path: Path) -> None:
    events = {r: [made([0, 1]), made([2, 3]), made(None), call("broadcast", [4], t=2.0)] for r in range(4)}
    assert causes(findings(tmp_path, events)) == []


def test_groups_created_by_their_members_alone_with_local_synchronization_are_no_mismatch(tmp_path: Path) -> None:
    events = {r: [made([0, 1] if r < 2 else [2, 3], local_synchronization=True)] for r in range(4)}
    assert causes(findings(tmp_path, events)) == []


def test_a_rank_that_went_on_without_creating_the_group_is_named_and_one_that_stopped_is_not(tmp_path: Path) -> None:
    went_on = {
        0: [made([0, 1]), call("barrier", t=2.0)],
        1: [made([0, 1]), call("barrier", t=2.0)],
        2: [call("barrier", t=2.0)],
    }
    (finding,) = [f for f in findings(tmp_path / "on", went_on) if f.severity != "note"]
    assert finding.rank == 2 and "rank 2 never made it" in finding.title
    stopped = {
        0: [made([0, 1]), call("barrier", t=2.0)],
        1: [made([0, 1]), call("barrier", t=2.0)],
        2: [call("barrier", t=0.5)],
    }
    assert "collective-mismatch" not in causes(findings(tmp_path / "stopped", stopped, status="failed"))
