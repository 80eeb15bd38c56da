"""The record as a reader finds it: a README in every record, no empty stacks files, every rank's
``ended_at`` (also for workers that leave through ``os._exit``), manifests checked on load."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from fake_records import JOB, make_record

from harness.backends.hosts import ranks_from_probe
from harness.errors import RecordError
from harness.record.run_record import README_TEMPLATE, RecordWriter, RunRecord, read_events

DOCS = Path(__file__).resolve().parent.parent / "docs" / "run-record.md"


@pytest.mark.unit
def test_every_record_starts_with_a_readme(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path / "demo-local-x", JOB, "local")
    writer.start()
    readme = (writer.root / "README.md").read_text()
    assert readme.startswith("# Run record demo-local-x\n")
    assert "Job `fake` on the `local` rung, 1 host(s) x 1 process(es)" in readme
    assert "docs/run-record.md" in readme


@pytest.mark.unit
def test_the_readme_names_only_files_the_format_documents() -> None:
    documented = DOCS.read_text()
    paths = re.findall(r"^\| `([^`]+)` \|", README_TEMPLATE, flags=re.M)
    assert len(paths) >= 15
    for path in paths:
        assert f"{path} " in documented or f"{path}\n" in documented, path
    assert "README.md" in documented


@pytest.mark.unit
def test_empty_stacks_files_are_removed_when_the_run_ends(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path / "r", JOB, "local")
    writer.start()
    (writer.root / "ranks").mkdir()
    (writer.root / "ranks" / "rank-0.stacks.txt").write_text("")
    (writer.root / "ranks" / "rank-1.stacks.txt").write_text("Current thread 0x1 (most recent call first):\n")
    writer.finish("hung")
    assert sorted(p.name for p in (writer.root / "ranks").iterdir()) == ["rank-1.stacks.txt"]


def _process(root: Path, pid: int, **info: object) -> None:
    path = root / "processes" / f"algo-1-{pid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": "algo-1", **info}))


@pytest.mark.unit
def test_a_rank_that_left_through_os_exit_ends_at_its_last_sign_of_life(tmp_path: Path) -> None:
    """torchrun workers of the reference job end with os._exit: no exit handler, no ended_at from
    the probe; a DataLoader worker of the same rank is not the rank."""
    _process(tmp_path, 10, rank="0", local_rank="0")  # the rank: no ended_at
    _process(tmp_path, 11, rank="0", local_rank="0", mp_target="_worker_loop", ended_at="2020-01-01T00:00:00.000Z")
    _process(tmp_path, 12, rank="1", local_rank="1", ended_at="2026-01-01T00:00:05.000Z")  # the probe's own
    _process(tmp_path, 13, rank=None)  # the launcher
    (tmp_path / "ranks").mkdir()
    beat = time.mktime((2026, 1, 1, 0, 0, 3, 0, 0, 0)) - time.timezone
    (tmp_path / "ranks" / "rank-0.heartbeat").write_text(json.dumps({"pid": 10, "t": beat}))
    (tmp_path / "ranks" / "rank-0.log").write_text("2026-01-01T00:00:04.250000Z done\n")
    (tmp_path / "ranks" / "rank-0.jsonl").write_text(json.dumps({"t": beat - 1, "kind": "batch"}) + "\n")
    ranks = ranks_from_probe(tmp_path)
    assert list(ranks) == ["0", "1"]
    assert ranks["0"] == {
        "host": "algo-1",
        "pid": 10,
        "local_rank": "0",
        "ended_at": "2026-01-01T00:00:04.250Z",
        "exception": None,
        "ended_at_from": "last log line",
    }
    assert ranks["1"]["ended_at"] == "2026-01-01T00:00:05.000Z" and ranks["1"]["ended_at_from"] == "probe"  # type: ignore[index]


@pytest.mark.unit
def test_a_load_wants_every_key_the_harness_writes(tmp_path: Path) -> None:
    record = make_record(tmp_path, "local", losses=[1.0])
    manifest = json.loads((record.root / "manifest.json").read_text())
    del manifest["rung_facts"]
    (record.root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RecordError, match=r"manifest.json: rung_facts: missing"):
        RunRecord.load(record.root)


@pytest.mark.slow
def test_the_reference_job_leaves_a_complete_record(scenarios: Path, tmp_path: Path) -> None:
    from harness.backends import get_backend
    from harness.spec.job import load_job

    record = get_backend("local").run(load_job(scenarios / "ddp_csv" / "job.yaml"), tmp_path / "records")
    assert record.status == "succeeded"
    assert (record.root / "README.md").is_file()
    assert not [p for p in record.rank_stacks().values() if p.stat().st_size == 0]
    ranks = record.manifest.ranks
    assert sorted(ranks) == ["0", "1", "2", "3"]
    assert all(rank.ended_at for rank in ranks.values()), ranks
    assert all((rank.ended_at or "") >= record.manifest.started_at for rank in ranks.values())


@pytest.mark.unit
def test_a_batches_event_is_read_as_the_batch_events_it_stands_for(tmp_path: Path) -> None:
    lines = [
        {"t": 1.0, "kind": "batch", "n": 1, "size": 16, "digest": "ab"},
        {"t": 2.0, "kind": "batches", "columns": ["n", "size", "step"], "rows": [[2, 16, 1], [3, 8, 2]]},
        {"t": 3.0, "kind": "collective", "op": "all_reduce"},
        {"t": 4.0, "kind": "batches", "columns": ["n", "size", "step"], "rows": [[4, 16, 3]]},
    ]
    path = tmp_path / "rank-0.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert list(read_events(path)) == [
        lines[0],
        {"t": 2.0, "kind": "batch", "n": 2, "size": 16, "step": 1},
        {"t": 2.0, "kind": "batch", "n": 3, "size": 8, "step": 2},
        lines[2],
        {"t": 4.0, "kind": "batch", "n": 4, "size": 16, "step": 3},
    ]
