"""The `local` rung's network: each emulated host in its own network namespace on a bridge, as
separate instances are, and nothing of it left once the run ends, however it ends."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from terminal import terminal_signals

from harness.backends import get_backend, local
from harness.record.run_record import RunRecord
from harness.runtime import sandbox
from harness.spec.job import load_job

#: Every host serves its name on 7777 (the same port on each), algo-1 also on its loopback's
#: 7778; each then asks its own 127.0.0.1, every algo-N, and 127.0.0.1:7778, prints what it
#: learnt (NETCHECK), and waits for the test's go file: then exits 0, or 1 on algo-2 with
#: ``--mode fail``.
CHECK_SCRIPT = r"""
import argparse, json, os, socket, subprocess, sys, threading, time

parser = argparse.ArgumentParser()
parser.add_argument("--go")
parser.add_argument("--mode", default="succeed")
args, _ = parser.parse_known_args()
me, hosts = os.environ["SM_CURRENT_HOST"], json.loads(os.environ["SM_HOSTS"])


def serve(addr, port):
    server = socket.socket()
    try:
        server.bind((addr, port))
    except OSError as exc:
        return f"bind failed: {exc}"
    server.listen()

    def loop():
        while True:
            conn, _ = server.accept()
            conn.sendall(me.encode())
            conn.close()

    threading.Thread(target=loop, daemon=True).start()
    return "bound"


def ask(addr, port, wait_s):
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with socket.create_connection((addr, port), timeout=5) as conn:
                return conn.recv(64).decode()
        except OSError as exc:
            if time.monotonic() > deadline:
                return f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)


loopback_only = serve("127.0.0.1", 7778) if me == "algo-1" else None
bound = serve("0.0.0.0", 7777)
addresses = {host: socket.gethostbyname(host) for host in hosts}
peers = {host: ask(host, 7777, 60) for host in hosts}  # algo-1's 7778 is up once it answers
other = addresses[[h for h in hosts if h != me][0]]
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
    udp.connect((other, 9))  # no packet: only the route, and so the source address, is chosen
    own = udp.getsockname()[0]
child = subprocess.run(
    [sys.executable, "-c", "import os; print(os.readlink('/proc/self/ns/net'))"], capture_output=True, text=True
)
result = {
    "host": me,
    "bound_7777": bound,
    "loopback_only_7778": loopback_only,
    "addresses": addresses,
    "own_address": own,
    "hostname": socket.gethostname(),
    "loopback_7777": ask("127.0.0.1", 7777, 0),
    "peers_7777": peers,
    "loopback_7778": ask("127.0.0.1", 7778, 0),
    "netns": os.readlink("/proc/self/ns/net"),
    "child_netns": child.stdout.strip(),
}
print("NETCHECK " + json.dumps(result), flush=True)
while not os.path.exists(args.go):
    time.sleep(0.1)
sys.exit(1 if args.mode == "fail" and me == "algo-2" else 0)
"""


def _write_job(tmp_path: Path, mode: str, **extra: object) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(CHECK_SCRIPT)
    (tmp_path / "control").mkdir()  # a channel: the one path of the test's that every host sees
    lines = ["name: netcheck", "source_dir: src", "entry_point: train.py", "instance_count: 2"]
    lines.append(f"channels: {{control: {tmp_path / 'control'}}}")
    lines.append(f"hyperparameters: {{go: /opt/ml/input/data/control/go, mode: {mode}}}")
    lines += [f"{key}: {value}" for key, value in extra.items()]
    (tmp_path / "job.yaml").write_text("\n".join(lines) + "\n")
    return tmp_path / "job.yaml"


def _netns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _holders(namespaces: set[str]) -> list[str]:
    """What still holds any of ``namespaces``: a process in it, an open descriptor, a mount. With
    none, the kernel frees the namespace, and the interfaces in it (veths, bridge) with it."""
    held = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        if _netns(entry) in namespaces:
            held.append(f"process {entry} is in {_netns(entry)}")
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue
            if target in namespaces:
                held.append(f"process {entry} holds {target} open (fd {fd})")
    mounts = Path("/proc/self/mountinfo").read_text()
    held += [f"{ns} is mounted" for ns in namespaces if ns in mounts]
    return held


def _our_links() -> set[str]:
    """Interfaces of the kind the rung makes (br0, vethN) in the test's own namespace."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}
    return {name for name in names if re.fullmatch(r"br0|veth\d+", name)}


@pytest.fixture
def namespaces_or_skip() -> None:
    reason = local._namespaces_unavailable() or local._host_networks_unavailable()
    if reason:
        pytest.skip(reason)


class _Run:
    """``harness run`` of the check job in a child, read until every host has said NETCHECK."""

    def __init__(self, tmp_path: Path, mode: str, **extra: object) -> None:
        self.tmp_path = tmp_path
        self.links_before = _our_links()
        job = _write_job(tmp_path, mode, **extra)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness", "run", str(job), "--records", str(tmp_path / "records"), "-v"],
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=terminal_signals,
        )
        assert self.proc.stderr is not None
        self.checks: dict[str, dict[str, Any]] = {}
        self.seen: list[str] = []
        for line in self.proc.stderr:
            self.seen.append(line)
            if "NETCHECK " in line:
                check = json.loads(line.split("NETCHECK ", 1)[1])
                self.checks[check["host"]] = check
                if len(self.checks) == 2:
                    break
        assert len(self.checks) == 2, "".join(self.seen[-40:])
        # The run's namespaces, seen from outside: the anchors' and the launchers'.
        self.namespaces = {ns for pid in _descendants(self.proc.pid) if (ns := _netns(pid)) is not None}
        self.namespaces.discard(_netns("self"))
        assert len(self.namespaces) == 3 and _holders(self.namespaces)  # the bridge's and each host's, seen

    def finish(self, exit_code: int) -> RunRecord:
        assert self.proc.stderr is not None
        rest = self.proc.stderr.read()
        assert self.proc.wait(timeout=120) == exit_code, "".join(self.seen[-20:]) + rest
        record = RunRecord.load(next((self.tmp_path / "records").iterdir()))
        assert _holders(self.namespaces) == []
        assert _our_links() == self.links_before  # nothing was ever made in the machine's namespace
        assert not Path(record.manifest.rung_facts["work_dir"]).exists()
        return record


@pytest.mark.slow
@pytest.mark.usefixtures("namespaces_or_skip")
def test_each_host_has_its_own_network_and_nothing_is_left(tmp_path: Path) -> None:
    run = _Run(tmp_path, "succeed")
    one, two = run.checks["algo-1"], run.checks["algo-2"]
    addresses = sandbox.host_addresses(["algo-1", "algo-2"])
    assert addresses == {"algo-1": "10.0.0.2", "algo-2": "10.0.0.3"}
    assert one["addresses"] == two["addresses"] == addresses  # distinct, and the same on every host
    assert (one["own_address"], two["own_address"]) == ("10.0.0.2", "10.0.0.3")
    assert (one["hostname"], two["hostname"]) == ("algo-1", "algo-2")
    assert one["bound_7777"] == two["bound_7777"] == "bound"  # the same port on each host
    assert (one["loopback_7777"], two["loopback_7777"]) == ("algo-1", "algo-2")  # 127.0.0.1 is the host's own
    assert one["loopback_7778"] == "algo-1"
    assert "ConnectionRefusedError" in two["loopback_7778"]  # algo-2's loopback never reaches algo-1
    assert one["peers_7777"] == two["peers_7777"] == {"algo-1": "algo-1", "algo-2": "algo-2"}
    assert one["netns"] != two["netns"]
    assert one["child_netns"] == one["netns"] and two["child_netns"] == two["netns"]  # children inherit
    assert {one["netns"], two["netns"]} < run.namespaces  # and the bridge's
    (tmp_path / "control" / "go").touch()
    record = run.finish(0)
    assert record.status == "succeeded"
    facts = record.manifest.rung_facts
    assert facts["network"].startswith("one network namespace per host, bridged")
    assert "algo-2 at 10.0.0.3" in facts["network"] and facts["machine"]["network_interface"] == "eth0"
    env = json.loads((record.root / "hosts" / "algo-2" / "received" / "env.json").read_text())
    assert env["NCCL_SOCKET_IFNAME"] == "eth0"  # the interface each host has, as on SageMaker


@pytest.mark.slow
@pytest.mark.usefixtures("namespaces_or_skip")
def test_nothing_is_left_after_a_failure(tmp_path: Path) -> None:
    run = _Run(tmp_path, "fail")
    (tmp_path / "control" / "go").touch()
    assert run.finish(1).status == "failed"


@pytest.mark.slow
@pytest.mark.usefixtures("namespaces_or_skip")
def test_nothing_is_left_after_max_run(tmp_path: Path) -> None:
    run = _Run(tmp_path, "hold", max_run=20)
    assert run.finish(1).status == "timeout"


@pytest.mark.slow
@pytest.mark.usefixtures("namespaces_or_skip")
def test_nothing_is_left_after_sigint(tmp_path: Path) -> None:
    run = _Run(tmp_path, "hold")
    run.proc.send_signal(signal.SIGINT)
    assert run.finish(130).status == "interrupted"


@pytest.mark.slow
@pytest.mark.usefixtures("namespaces_or_skip")
def test_without_bridges_the_hosts_share_one_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where veth pairs cannot be made the rung still isolates the run, in one namespace, and the
    record says that the hosts share it."""
    monkeypatch.setattr(local, "_host_networks_unavailable", lambda: "no veth here (test)")
    job = load_job(_write_job(tmp_path, "succeed"))
    (tmp_path / "control" / "go").touch()  # the job checks, then ends at once
    record = get_backend("local").run(job, tmp_path / "records")
    assert record.status == "succeeded"
    facts = record.manifest.rung_facts
    assert facts["network"].startswith("one network namespace for the run") and "no veth here" in facts["network"]
    assert facts["machine"]["network_interface"] == "lo"
    checks = {}
    for host in record.hosts:
        line = next(x for x in record.host_log(host).read_text().splitlines() if "NETCHECK " in x)
        checks[host] = json.loads(line.split("NETCHECK ", 1)[1])
    assert checks["algo-1"]["addresses"] == {"algo-1": "127.0.0.1", "algo-2": "127.0.0.1"}
    assert checks["algo-1"]["netns"] == checks["algo-2"]["netns"] != _netns("self")
    assert sorted(c["bound_7777"] == "bound" for c in checks.values()) == [False, True]  # one port for all


@pytest.mark.parametrize(
    "degraded, shared, network, interface",
    [
        (None, None, "one network namespace per host, bridged: eth0 with algo-1 at 10.0.0.2, algo-2 at", "eth0"),
        (None, "no ip (test)", "one network namespace for the run, loopback only", "lo"),
        ("not permitted (test)", None, "none of its own", "lo"),
    ],
)
@pytest.mark.unit
def test_the_plan_states_the_network_model(
    degraded: str | None, shared: str | None, network: str, interface: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "_namespaces_unavailable", lambda: degraded)
    monkeypatch.setattr(local, "_host_networks_unavailable", lambda: shared)
    job = load_job(Path(__file__).resolve().parent.parent / "scenarios" / "ddp_csv" / "job.yaml")
    plan = get_backend("local").plan(job)
    assert str(plan.facts["network"]).startswith(network)
    assert plan.hosts["algo-2"].env["NCCL_SOCKET_IFNAME"] == interface
    assert plan.host_networks == (degraded is None and shared is None)


@pytest.mark.unit
def test_hosts_file_maps_each_host_to_its_address() -> None:
    hosts = ["algo-1", "algo-2", "algo-3"]
    lines = sandbox.hosts_file(hosts, sandbox.host_addresses(hosts)).splitlines()
    assert "127.0.0.1\tlocalhost" in lines and "10.0.0.4\talgo-3" in lines
    assert "127.0.0.1\talgo-1 algo-2 algo-3" in sandbox.hosts_file(hosts).splitlines()
    assert sandbox.host_addresses([f"algo-{n}" for n in range(1, 301)])["algo-300"] == "10.0.1.45"


#: Each host writes a file named after itself into /tmp, /var/tmp, /dev/shm and home, waits for
#: the other to have written, and says what it sees there (OWNCHECK).
OWN_DIRS_SCRIPT = r"""
import json, os, time
me = os.environ["SM_CURRENT_HOST"]
dirs = ["/tmp", "/var/tmp", "/dev/shm", os.path.expanduser("~")]
for d in dirs:
    with open(os.path.join(d, f"harness-own-{me}"), "w") as f:
        f.write(me)
time.sleep(1.5)
seen = {d: sorted(f for f in os.listdir(d) if f.startswith("harness-own-")) for d in dirs}
shm = os.statvfs("/dev/shm")
print("OWNCHECK " + json.dumps({"host": me, "seen": seen, "shm": shm.f_frsize * shm.f_blocks}), flush=True)
"""


@pytest.mark.slow
@pytest.mark.usefixtures("namespaces_or_skip")
def test_each_host_has_its_own_tmp_shm_and_home(tmp_path: Path) -> None:
    """A file one host writes to /tmp, /var/tmp, /dev/shm or home is not there on the other, as
    on separate instances, and nothing of it reaches this machine's directories."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(OWN_DIRS_SCRIPT)
    (tmp_path / "job.yaml").write_text("name: owncheck\nsource_dir: src\nentry_point: train.py\ninstance_count: 2\n")
    record = get_backend("local").run(load_job(tmp_path / "job.yaml"), tmp_path / "records")
    assert record.status == "succeeded"
    for host in record.hosts:
        line = next(x for x in record.host_log(host).read_text().splitlines() if "OWNCHECK " in x)
        said = json.loads(line.split("OWNCHECK ", 1)[1])
        assert all(names == [f"harness-own-{host}"] for names in said["seen"].values()), said
        shm = os.statvfs("/dev/shm")
        assert said["shm"] == shm.f_frsize * shm.f_blocks  # as large as this machine's
    home = Path.home()
    assert not [p for d in (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"), home) for p in d.glob("harness-own-*")]
    assert "/dev/shm" in record.manifest.rung_facts["file_system"]
