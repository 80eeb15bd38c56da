"""Canned run records, written in the documented format without running anything, so the diff
engine, the verdict and the CLI can be tested in milliseconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.record.run_record import RecordWriter, RunRecord, Status, write_json
from harness.spec.job import JobSpec

JOB = JobSpec(name="fake", image="img", instance_count=1, hyperparameters={"lr": 0.1, "flag": False})


def make_record(
    root: Path,
    rung: str,
    *,
    losses: list[float] | None = None,
    status: Status = "succeeded",
    rank_events: dict[int, list[dict[str, Any]]] | None = None,
    processes: list[dict[str, Any]] | None = None,
    job: JobSpec = JOB,
) -> RunRecord:
    writer = RecordWriter(root / f"{rung}-{len(list(root.glob('*')))}", job, rung)
    writer.start()
    for host in job.hosts:
        writer.host_dir(host)
        (writer.root / "hosts" / host / "log.txt").write_text(
            "".join(f"2026-01-01T00:00:00.000Z step={i} loss={v}\n" for i, v in enumerate(losses or []))
        )
        writer.host_result(host, exit_code=0 if status == "succeeded" else 1)
    write_json(writer.root / "metrics.json", {"loss": {job.hosts[0]: list(losses or [])}})
    for rank, events in (rank_events or {}).items():
        path = writer.root / "ranks" / f"rank-{rank}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(e) + "\n" for e in events))
    for index, process in enumerate(processes or []):
        write_json(
            writer.root / "processes" / f"algo-1-{100 + index}.json", {"host": "algo-1", "pid": 100 + index, **process}
        )
    writer.finish(status)
    return RunRecord.load(writer.root)
