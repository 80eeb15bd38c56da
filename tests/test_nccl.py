"""NCCL's own INFO lines read into what it chose (``harness.judge.nccl``), and two rungs that chose
another network. The lines are NCCL's as users posted them: sockets in a container, EFA through
aws-ofi-nccl on p5en (NVIDIA/nccl#1597), InfiniBand."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_records import make_record

from harness.judge import nccl
from harness.judge.protocol import CheckContext
from harness.judge.verdict import judge, settle
from harness.record.run_record import RunRecord

pytestmark = pytest.mark.unit

SOCKET = """\
2026-01-01T00:00:00.000Z algo-1:80:80 [0] NCCL INFO Bootstrap : Using eth0:10.0.0.2<0>
2026-01-01T00:00:00.000Z algo-1:80:80 [0] NCCL INFO cudaDriverVersion 12040
2026-01-01T00:00:00.000Z NCCL version 2.21.5+cuda12.4
2026-01-01T00:00:00.000Z algo-1:80:95 [0] NCCL INFO NET/Plugin: Could not find: libnccl-net.so. Using internal network plugin.
2026-01-01T00:00:00.000Z algo-1:80:95 [0] NCCL INFO NET/IB : No device found.
2026-01-01T00:00:00.000Z algo-1:80:95 [0] NCCL INFO NET/Socket : Using [0]eth0:10.0.0.2<0>
2026-01-01T00:00:00.000Z algo-1:80:95 [0] NCCL INFO Using network Socket
2026-01-01T00:00:00.000Z algo-1:80:95 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM
2026-01-01T00:00:00.000Z algo-1:80:95 [0] NCCL INFO Channel 00/0 : 1[1] -> 2[0] [send] via NET/Socket/0
"""  # noqa: E501

EFA = """\
2026-01-01T00:00:00.000Z 8h200-2:6831:6840 [0] NCCL INFO NET/OFI Selected Provider is efa (found 16 nics)
2026-01-01T00:00:00.000Z 8h200-2:6831:6840 [0] NCCL INFO NET/OFI Support for global registrations: true
2026-01-01T00:00:00.000Z 8h200-2:6831:6840 [0] NCCL INFO Using network Libfabric
2026-01-01T00:00:00.000Z NCCL version 2.21.5+cuda12.4
2026-01-01T00:00:00.000Z 8h200-2:6831:6840 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM
2026-01-01T00:00:00.000Z 8h200-2:6831:6840 [0] NCCL INFO Channel 00/0 : 15[7] -> 0[0] [receive] via NET/Libfabric/0/GDRDMA
"""  # noqa: E501


def _record(root: Path, rung: str, log: str, status: str = "succeeded") -> RunRecord:
    record = make_record(root, rung, status=status)  # type: ignore[arg-type]
    with record.host_log("algo-1").open("a") as handle:
        handle.write(log)
    return record


def test_the_lines_say_which_network_provider_and_transports() -> None:
    facts = nccl.NcclFacts()
    for line in EFA.splitlines():
        facts.read(line)
    assert facts.networks == {"Libfabric"} and facts.providers == {"efa"} and facts.versions == {"2.21.5"}
    assert facts.transports == {"P2P", "NET/Libfabric"}
    facts = nccl.NcclFacts()
    for line in SOCKET.splitlines():
        facts.read(line)
    assert facts.networks == {"Socket"} and facts.interfaces == {"[0]eth0:10.0.0.2<0>"}
    assert facts.transports == {"P2P", "NET/Socket"}


def test_another_network_beside_a_hang_is_named_with_it(tmp_path: Path) -> None:
    baseline = _record(tmp_path, "docker", SOCKET)
    candidate = _record(tmp_path, "sagemaker", EFA, status="hung")
    [finding] = nccl.compare(baseline, candidate, CheckContext())
    assert finding.cause == "nccl-network-differs" and finding.severity == "divergence" and finding.corroborating
    assert finding.title == "NCCL's network is Libfabric on sagemaker and Socket on docker"
    assert "OFI provider: none -> efa" in finding.evidence


def test_the_same_choices_or_no_info_lines_are_no_finding(tmp_path: Path) -> None:
    assert (
        nccl.compare(_record(tmp_path, "docker", SOCKET), _record(tmp_path, "sagemaker", SOCKET), CheckContext()) == []
    )
    assert nccl.compare(_record(tmp_path, "docker", SOCKET), _record(tmp_path, "sagemaker", ""), CheckContext()) == []


def test_alone_another_network_is_a_note_not_a_departure(tmp_path: Path) -> None:
    """Two rungs that both worked over different networks are at parity; the choice is shown."""
    baseline = _record(tmp_path, "docker", SOCKET)
    candidate = _record(tmp_path, "sagemaker", EFA)
    assert judge([baseline, candidate]).outcome == "parity"
    [finding] = settle(nccl.compare(baseline, candidate, CheckContext()))
    assert finding.cause == "nccl-network-differs" and finding.severity == "note"
