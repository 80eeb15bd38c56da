"""What NCCL chose on each rung, read from its own ``NCCL_DEBUG=INFO`` lines, and where two rungs
chose differently.

The same job can meet its peers over another network on another rung: TCP sockets in a
container, EFA through the aws-ofi-nccl plugin (``Using network Libfabric``, ``NET/OFI Selected
Provider is efa``) on a SageMaker instance, InfiniBand elsewhere; and a collective that works
over one hangs over the other (aws/deep-learning-containers#2675; NVIDIA/nccl#1597 shows the
lines). The docker rung turns NCCL's INFO lines on where it gives GPUs; other rungs have them
where the job sets ``NCCL_DEBUG=INFO``. A rung without them is not compared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from harness.judge.findings import Finding
from harness.judge.protocol import CheckContext
from harness.record.run_record import RunRecord

_INFO = re.compile(rb"[^\n]*NCCL (?:INFO|version)[^\n]*")
_VERSION = re.compile(r"NCCL version (\d+\.\d+\.\d+)")
_NETWORK = re.compile(r"NCCL INFO Using network (.+?)\s*$")
_PROVIDER = re.compile(r"NET/OFI Selected [Pp]rovider is (\w+)")
_INTERFACE = re.compile(r"NET/(?:Socket|IB) : Using (.+?)\s*$")
#: "Channel 00/0 : 0[0] -> 1[1] via P2P/IPC", "… [receive] via NET/AWS Libfabric/0/GDRDMA"
_TRANSPORT = re.compile(r" via (P2P|SHM|NET/[^/]+|COLLNET)")


@dataclass
class NcclFacts:
    """What one record's NCCL said it used, over every rank and host log."""

    versions: set[str] = field(default_factory=set)
    networks: set[str] = field(default_factory=set)
    providers: set[str] = field(default_factory=set)
    interfaces: set[str] = field(default_factory=set)
    transports: set[str] = field(default_factory=set)

    def read(self, line: str) -> None:
        for pattern, into in (
            (_VERSION, self.versions),
            (_NETWORK, self.networks),
            (_PROVIDER, self.providers),
            (_INTERFACE, self.interfaces),
        ):
            if found := pattern.search(line):
                into.add(found.group(1))
        self.transports.update(_TRANSPORT.findall(line))

    def __bool__(self) -> bool:
        return bool(self.networks or self.transports or self.providers)


def facts(record: RunRecord) -> NcclFacts:
    """NCCL's choices in ``record``; empty (false) where its logs hold no INFO line."""
    found = NcclFacts()
    paths = [*record.rank_logs().values(), *(record.host_log(host) for host in record.hosts)]
    for path in paths:
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"NCCL" not in data:
            continue
        for line in _INFO.findall(data):
            found.read(line.decode("utf-8", "replace"))
    return found


def _shown(values: set[str]) -> str:
    return ", ".join(sorted(values)) or "none"


def compare(baseline: RunRecord, candidate: RunRecord, context: CheckContext) -> list[Finding]:
    a, b = facts(baseline), facts(candidate)
    if not (a and b):
        return []
    rows = [
        (label, x, y)
        for label, x, y in (
            ("network", a.networks, b.networks),
            ("OFI provider", a.providers, b.providers),
            ("transports between ranks", a.transports, b.transports),
            ("NCCL version", a.versions, b.versions),
            ("interfaces", a.interfaces, b.interfaces),
        )
        if x != y
    ]
    decisive = [row for row in rows if row[0] in ("network", "OFI provider", "NCCL version")]
    if not rows:
        return []
    first = (decisive or rows)[0]
    return [
        Finding(
            kind="environment",
            severity="divergence" if decisive else "note",
            title=f"NCCL's {first[0]} is {_shown(first[2])} on {candidate.rung} and {_shown(first[1])} on "
            f"{baseline.rung}",
            evidence=[f"{label}: {_shown(x)} -> {_shown(y)}" for label, x, y in rows],
            hint="give the job's environment the NCCL settings SageMaker's instance will have (NCCL_SOCKET_IFNAME, "
            "FI_PROVIDER=efa with the aws-ofi-nccl plugin in the image, NCCL_NET) so that every rung uses the same "
            "network; NCCL_DEBUG=INFO shows its choice",
            cause="nccl-network-differs",
            confidence=0.6,
            corroborating=True,  # explains a hang or a failure beside it; alone it is a note
        )
    ]
