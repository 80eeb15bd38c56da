"""Canned rungs: a rung that runs nothing and writes the record a function returns, as httpx's
``MockTransport`` turns a function into a transport. The ladder, the CLI, bisect and the reports
are tested on them in milliseconds; the real rungs keep their own tests, with real processes.

    def respond(job, rung, options):
        return Canned(rank_events={0: [steps_event([2.0, 1.5])]})

    with canned_rungs(respond, ["single", "local"]):
        result = climb(job, records, rungs=["single", "local"])

A canned rung runs the job as the rung of its name would (``single``: one host, one process),
so the ladder hands it what it hands the real one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.backends import backend_class, registered, rungs
from harness.backends.base import Backend, Capabilities, Plan, Progress, RungOptions
from harness.record.run_record import RecordWriter, Status, write_json
from harness.spec.job import JobSpec


@dataclass(frozen=True)
class Canned:
    """What a canned run wrote: its status, the lines each host logged, each rank's events
    (docs/run-record.md) and the rung's facts."""

    status: Status = "succeeded"
    log: Sequence[str] = ()
    rank_events: Mapping[int, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    facts: Mapping[str, Any] = field(default_factory=dict)


#: (the job as the rung runs it, the rung's name, its settings) → what the run wrote.
Respond = Callable[[JobSpec, str, RungOptions], Canned]


def steps_event(
    losses: Sequence[float], *, samples: int = 16, grad_norms: Sequence[float] | None = None
) -> dict[str, Any]:
    """One rank's loss ledger (a ``steps`` event) for ``losses``, one optimizer step each."""
    count = len(losses)
    return {
        "kind": "steps",
        "step": list(range(count)),
        "loss": list(losses),
        "backwards": [1] * count,
        "samples": [samples] * count,
        "grad_norm": list(grad_norms) if grad_norms is not None else [None] * count,
        "lr": [None] * count,
    }


@dataclass
class CannedPlan(Plan[JobSpec]):
    canned: Canned = field(default_factory=Canned)


class CannedRung(Backend[JobSpec, CannedPlan]):
    """A rung whose run is :attr:`respond`'s answer (see :func:`canned_rungs`)."""

    name = "canned"
    workload = "training"
    capabilities = Capabilities(gpus=False, separate_hosts=False, containers=False, hang_detection=False)
    respond: Respond = staticmethod(lambda job, rung, options: Canned())

    def unavailable_reason(self) -> str | None:
        return None

    def plan(self, job: JobSpec) -> CannedPlan:
        job = self.job_as_run(job)
        canned = type(self).respond(job, self.name, self.options)
        return CannedPlan(rung=self.name, job=job, hosts={}, facts=dict(canned.facts), canned=canned)

    def _execute(self, plan: CannedPlan, record: RecordWriter, progress: Progress | None) -> Status:
        canned = plan.canned
        for host in plan.job.hosts:
            lines = [f"2026-01-01T00:00:00.000Z {line}\n" for line in canned.log]
            (record.host_dir(host) / "log.txt").write_text("".join(lines), encoding="utf-8")
            if progress is not None:
                for line in canned.log:
                    progress(host, line)
            record.host_result(host, exit_code=0 if canned.status == "succeeded" else 1)
        for rank, events in canned.rank_events.items():
            path = record.root / "ranks" / f"rank-{rank}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps({"t": 0.0, **event}) + "\n" for event in events), encoding="utf-8")
        for host in plan.job.hosts:  # each process of the job, as the probe records it
            exit_code = 0 if canned.status == "succeeded" else 1
            write_json(record.root / "processes" / f"{host}-1.json", {"host": host, "pid": 1, "exit_code": exit_code})
        return canned.status


def canned_rung(name: str, respond: Respond) -> type[CannedRung]:
    """A canned rung called ``name`` that answers with ``respond``; it takes the job and the
    settings the known rung of that name takes (``single``: one host, one process)."""
    like = backend_class(name) if name in rungs() else None
    attributes: dict[str, Any] = {"__module__": __name__, "name": name, "respond": staticmethod(respond)}
    if like is not None:
        attributes.update(Options=like.Options, job_as_run=classmethod(lambda cls, job: like.job_as_run(job)))
    return type(f"Canned_{name.replace('-', '_')}", (CannedRung,), attributes)


@contextlib.contextmanager
def canned_rungs(respond: Respond, names: Sequence[str]) -> Iterator[dict[str, type[Backend[Any, Any]]]]:
    """Canned rungs stand in for the rungs ``names`` while the block runs (this process only)."""
    backends: dict[str, type[Backend[Any, Any]]] = {name: canned_rung(name, respond) for name in names}
    with registered(backends):
        yield backends
