"""What the hosts of one run shared that SageMaker hosts never share: a file system.

SageMaker instances share nothing but what each downloads; emulated hosts on one machine may
share ``/tmp`` and the rest of the file system outside ``/opt/ml``. A job that meets its peers
through a file works there and hangs on separate instances, so it is named from what each rank
did, on any rung, whether or not it worked here:

* ranks on different hosts that rendezvous through one ``file://`` init method
  (``file-rendezvous-across-hosts``), from the rendezvous each process recorded before it blocked;
* a scratch file the job's own code wrote on one host and read on another that never wrote it
  (``shared-scratch-path``), from the probe's ``scratch`` events.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from harness.judge.findings import ECHOES, Finding
from harness.judge.protocol import CheckContext
from harness.record.run_record import RunRecord

_CONSEQUENCES = (*ECHOES, "rendezvous-timeout", "collective-timeout")


def check_run(record: RunRecord, context: CheckContext) -> list[Finding]:
    processes = record.processes()
    failed = record.status != "succeeded"
    return [*_file_rendezvous(processes, failed), *_scratch(record.rank_events(), processes, failed)]


def _file_rendezvous(processes: list[dict[str, Any]], failed: bool) -> list[Finding]:
    hosts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for process in processes:
        rendezvous = process.get("rendezvous")
        if isinstance(rendezvous, dict) and rendezvous.get("file"):
            hosts[str(rendezvous["file"])][str(process.get("host"))].append(int(rendezvous.get("rank", -1)))
    for path, by_host in sorted(hosts.items()):
        if len(by_host) < 2:
            continue
        return [
            Finding(
                kind="ranks",
                severity="failure" if failed else "divergence",
                title=f"ranks on {len(by_host)} hosts rendezvous through the file {path}, which hosts that share no "
                "file system never both see",
                evidence=[f"{host}: ranks {sorted(ranks)}" for host, ranks in sorted(by_host.items())],
                hint="rendezvous over the network: init_method='env://' (MASTER_ADDR/MASTER_PORT, which torchrun and "
                "SageMaker set) or tcp://algo-1:PORT",
                cause="file-rendezvous-across-hosts",
                confidence=0.95,
                explains=_CONSEQUENCES,
            )
        ]
    return []


def _scratch(events: dict[int, list[dict[str, Any]]], processes: list[dict[str, Any]], failed: bool) -> list[Finding]:
    host_of = {
        int(p["rank"]): str(p.get("host"))
        for p in processes
        if str(p.get("rank", "")).lstrip("-").isdigit() and p.get("host") is not None
    }
    writers: dict[str, dict[str, str]] = defaultdict(dict)  # path -> host -> the line that wrote it
    readers: dict[str, dict[str, str]] = defaultdict(dict)
    for rank, evs in events.items():
        host = host_of.get(rank)
        if host is None:
            continue
        for event in evs:
            if event.get("kind") == "scratch":
                into = writers if event.get("mode") == "w" else readers
                into[str(event["path"])].setdefault(host, str(event.get("caller")))
    crossed = []
    for path, read_on in sorted(readers.items()):
        written_on = writers.get(path, {})
        foreign = sorted(h for h in read_on if h not in written_on)
        if written_on and foreign:
            crossed.append((path, written_on, {h: read_on[h] for h in foreign}))
    if not crossed:
        return []
    path, written_on, read_on = crossed[0]
    writer = next(iter(sorted(written_on)))
    reader = next(iter(sorted(read_on)))
    return [
        Finding(
            kind="ranks",
            severity="failure" if failed else "divergence",
            title=f"{path} is written on {writer} and read on {reader}, which never wrote it: SageMaker hosts share "
            "no file system",
            evidence=[
                f"written on {writer} at {written_on[writer]}",
                f"read on {reader} at {read_on[reader]}",
                *(
                    f"also {p}: written on {', '.join(sorted(w))}, read on {', '.join(sorted(r))}"
                    for p, w, r in crossed[1:4]
                ),
            ],
            hint="compute it on every host, pass it through a collective (broadcast_object_list), or write it to a "
            "channel or S3; a file outside /opt/ml is seen by its own host only",
            cause="shared-scratch-path",
            confidence=0.9,
            explains=_CONSEQUENCES,
        )
    ]
