"""Private Linux namespaces that make one machine look like a SageMaker cluster.

The ``local`` rungs run every host's processes on this machine, yet jobs expect what SageMaker
gives them: ``algo-1`` … ``algo-N`` resolve to distinct machines, ``MASTER_PORT`` 7777 is free on
each, ``127.0.0.1`` is the host's own, and ``/opt/ml`` is the host's own tree. Each host gets its
own network namespace, mount namespace (a private ``/etc/hosts``, that host's tree bind-mounted on
``/opt/ml``, its own empty ``/tmp``, ``/var/tmp``, ``/dev/shm`` and home, where the harness's
own paths are bound back: nothing one host writes there is seen by another) and UTS namespace
(``gethostname()`` is ``algo-N``); the hosts' networks meet on a bridge in one more namespace,
the run's own:

    run namespace:    br0 ── veth1, veth2, …           (no address, no route off the machine)
    algo-N namespace: lo (127.0.0.1), eth0 10.0.0.(N+1)/16, the peer of vethN

So a job that rendezvous on ``localhost`` waits for a master that is not there, as on real
instances, concurrent runs never collide, and nothing listens on the machine's real interfaces;
the machine's real ``/opt/ml`` and ``/etc/hosts`` are never written. Each namespace is held by a
tiny anchor process; a namespace ends with its last process, and its interfaces with it, so a
killed harness leaves nothing behind (the anchors exit when their stdin closes).

This needs ``CAP_SYS_ADMIN`` (root, as in CI and in containers started ``--privileged``). Without
it the rung runs degraded (:func:`unavailable_reason` says why) and the run record says so. Where
namespaces can be made but not bridges and veth pairs (no ``ip`` command, no veth driver:
:func:`host_networks_unavailable_reason`), every host shares the run's namespace, loopback only,
and the record says that instead.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.runtime import interrupts

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_BIND, MS_REC, MS_PRIVATE = 1, 4096, 16384, 1 << 18
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1

#: The interface each host's namespace has, as on SageMaker's instances and the container rungs.
HOST_INTERFACE = "eth0"
#: algo-N is 10.0.0.(N+1) on the bridge (up to 65533 hosts); the run's namespace is private, so
#: every run may use the same subnet.
_SUBNET, _PREFIX_LEN = (10, 0), 16
#: EC2 instances in a VPC (and so SageMaker's) have jumbo frames on eth0.
_MTU = 9001
_ANCHOR = [sys.executable, "-S", "-c", "import sys; sys.stdin.buffer.read()"]

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def unavailable_reason() -> str | None:
    """Why private namespaces cannot be made here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return f"private namespaces need Linux (this is {sys.platform})"
    probe = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            "import ctypes,os;l=ctypes.CDLL(None,use_errno=True);"
            f"os._exit(0 if l.unshare({CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWUTS})==0 else ctypes.get_errno())",
        ],
        check=False,
    )
    if probe.returncode != 0:
        return (
            f"cannot create network and mount namespaces ({os.strerror(probe.returncode)}); "
            "run as root or in a privileged container"
        )
    return None


def host_networks_unavailable_reason() -> str | None:
    """Why each host cannot get its own network namespace on a bridge, or None when it can (tried
    in a throwaway namespace that ends with the ``ip`` process that made it)."""
    ip = _ip_command()
    if ip is None:
        return "the ip command (iproute2) is not installed"
    try:
        probe = subprocess.run(
            [ip, "-batch", "-"],
            input=b"link add name probe0 type bridge\n"
            b"link add name probe1 type veth peer name probe2\n"
            b"link set probe1 master probe0\n",
            capture_output=True,
            preexec_fn=_enter_new_network,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run ip in a new network namespace ({exc})"
    if probe.returncode != 0:
        said = (probe.stderr or probe.stdout).decode(errors="replace").strip().splitlines()
        return f"cannot create a bridge and veth pairs ({said[0] if said else f'ip exited {probe.returncode}'})"
    return None


def host_addresses(hosts: list[str]) -> dict[str, str]:
    """Each host's address on the run's bridge: ``algo-N`` is ``10.0.0.(N+1)``."""
    return {host: ".".join(map(str, (*_SUBNET, (i + 2) // 256, (i + 2) % 256))) for i, host in enumerate(hosts)}


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))


def hosts_file(hosts: list[str], addresses: dict[str, str] | None = None) -> str:
    """``/etc/hosts`` for a run: every SageMaker host name at its address on the bridge, or, where
    the hosts share one namespace (``addresses`` None), all of them on its loopback."""
    names = (
        "".join(f"{addresses[host]}\t{host}\n" for host in hosts) if addresses else f"127.0.0.1\t{' '.join(hosts)}\n"
    )
    return f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{names}"


class RunNetwork:
    """The run's network namespaces, for as long as the run lasts: with ``hosts``, one per host
    (addresses in :attr:`addresses`) bridged in the run's own; without, the run's alone, shared
    by every host (loopback only). Each is held open by an anchor process that exits on its own
    when the harness dies (its stdin closes), so a killed harness leaves no namespace behind
    once its job's processes have ended (they are inside the hosts' namespaces).
    """

    def __init__(self, hosts: list[str] | None = None) -> None:
        self.addresses: dict[str, str] = host_addresses(hosts) if hosts else {}
        self._anchor: subprocess.Popen[bytes] | None = None
        self._hosts: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> RunNetwork:
        try:
            with interrupts.deferred():  # a signal while half made: undone below, then raised
                self._anchor = _start_anchor()
                for host in self.addresses:
                    self._hosts[host] = _start_anchor()
                if self._hosts:
                    self._bridge_hosts()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        anchors = [*self._hosts.values(), *([self._anchor] if self._anchor is not None else [])]
        for anchor in anchors:
            anchor.kill()
        for anchor in anchors:
            anchor.wait()
            if anchor.stdin is not None:
                anchor.stdin.close()
        self._anchor, self._hosts = None, {}

    @property
    def netns_path(self) -> str:
        """The run's namespace (the bridge's; every host's where hosts share it)."""
        assert self._anchor is not None, "RunNetwork used outside its `with` block"
        return f"/proc/{self._anchor.pid}/ns/net"

    def host_netns_path(self, host: str) -> str:
        """The namespace ``host``'s processes run in."""
        anchor = self._hosts.get(host)
        return self.netns_path if anchor is None else f"/proc/{anchor.pid}/ns/net"

    def _bridge_hosts(self) -> None:
        """A bridge in the run's namespace and, for each host, a veth pair: one end on the
        bridge, the other the host's eth0 with its address."""
        ip = _ip_command() or "ip"
        run_side = ["link add name br0 type bridge", "link set br0 up"]
        for n, anchor in enumerate(self._hosts.values(), start=1):
            run_side += [
                f"link add name veth{n} mtu {_MTU} type veth peer name {HOST_INTERFACE} mtu {_MTU} netns {anchor.pid}",
                f"link set veth{n} master br0 up",
            ]
        _wait_ip([_start_ip(ip, self.netns_path, run_side)])
        _wait_ip(
            [
                _start_ip(
                    ip,
                    self.host_netns_path(host),
                    [f"addr add {address}/{_PREFIX_LEN} dev {HOST_INTERFACE}", f"link set {HOST_INTERFACE} up"],
                )
                for host, address in self.addresses.items()
            ]
        )

    def host_entry(
        self,
        *,
        host: str,
        opt_ml: Path,
        hosts_path: Path,
        overlay_dir: Path,
        cwd: str,
        own_dirs: dict[str, Path],
        keep: Sequence[str],
    ) -> Callable[[], None]:
        """A ``preexec_fn`` that puts a child into its host's network and mounts (every process
        it starts inherits them: torchrun's workers, DataLoader workers, the probe's tees).
        ``own_dirs``: each directory the host has of its own (``/tmp``, home: see
        :func:`own_directories`) and the empty directory that backs it; ``keep``: the paths the
        harness hands the job (its interpreter, the record, the channels), which stay visible.
        ``/dev/shm`` is the host's own too, as large as this machine's."""
        netns = self.host_netns_path(host)
        shm_bytes = _shm_bytes()

        def enter() -> None:
            _enter_network(netns)
            _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare mount and UTS namespaces")
            # gethostname() returns algo-N, as the deep learning containers' LD_PRELOAD shim makes it.
            _check(_libc.sethostname(host.encode(), len(host)), "sethostname")
            _mount("none", "/", None, MS_REC | MS_PRIVATE)
            _mount(str(hosts_path), "/etc/hosts", None, MS_BIND)
            _mount_opt_ml(opt_ml, overlay_dir)
            for directory, backing in own_dirs.items():
                _mount_own(directory, backing, keep)
            if shm_bytes:
                _mount("tmpfs", "/dev/shm", "tmpfs", 0, f"mode=1777,size={shm_bytes}")
            os.chdir(cwd)  # as the job sees it (/opt/ml/code), not the work dir behind the mount

        return enter


def _shm_bytes() -> int | None:
    try:
        shm = os.statvfs("/dev/shm")
    except OSError:
        return None
    return shm.f_frsize * shm.f_blocks or None


def own_directories(home: str | None, keep: Sequence[str]) -> list[str]:
    """The directories each host has of its own, as separate instances do: ``/tmp``, ``/var/tmp``,
    the temporary directory and home; so a file one host writes there (a ``file://`` rendezvous,
    statistics rank 0 prepares for everyone) is not there on another. A directory that holds a
    path the harness hands the job as a whole (home is the job's source tree) stays shared."""
    candidates = ["/tmp", "/var/tmp", tempfile.gettempdir(), *([home] if home else [])]
    own: list[str] = []
    for directory in map(os.path.realpath, candidates):
        inside_kept = any(_within(directory, os.path.realpath(path)) for path in keep if os.path.isabs(path))
        if directory != "/" and os.path.isdir(directory) and directory not in own and not inside_kept:
            own.append(directory)
    return own


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _mount_own(directory: str, backing: Path, keep: Sequence[str]) -> None:
    """Mount the empty ``backing`` on ``directory``; each path in ``keep`` under it is bound back
    at its place from a handle opened before the mount hid it (so the host sees the harness's
    own paths there, and nothing else of the machine's directory)."""
    paths = sorted({os.path.realpath(p) for p in keep if os.path.isabs(p) and os.path.exists(p)})
    paths = [p for p in paths if _within(p, directory) and p != directory]
    outermost = [p for p in paths if not any(_within(p, q) and p != q for q in paths)]
    handles = [(path, os.open(path, os.O_PATH)) for path in outermost]
    try:
        _mount(str(backing), directory, None, MS_BIND)
        for path, handle in handles:
            source = f"/proc/self/fd/{handle}"
            if os.path.isdir(source):
                os.makedirs(path, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "a").close()  # noqa: SIM115 - an empty file to mount on
            _mount(source, path, None, MS_BIND | MS_REC)
    finally:
        for _, handle in handles:
            os.close(handle)


def _ip_command() -> str | None:
    return shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")  # root's PATH may lack sbin


def _start_anchor() -> subprocess.Popen[bytes]:
    """A process in a new network namespace (loopback up) that lives until its stdin closes. The
    namespace exists once ``Popen`` returns: the child made it before its ``exec``."""
    return subprocess.Popen(
        _ANCHOR,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_enter_new_network,
        start_new_session=True,  # a Ctrl-C at the terminal is the harness's to handle
    )


def _start_ip(ip: str, netns: str, commands: list[str]) -> tuple[subprocess.Popen[bytes], bytes]:
    proc = subprocess.Popen(
        [ip, "-batch", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: _enter_network(netns),
    )
    return proc, "".join(f"{command}\n" for command in commands).encode()


def _wait_ip(started: list[tuple[subprocess.Popen[bytes], bytes]]) -> None:
    """Feed each ``ip -batch`` its commands and wait for all of them (none left running when one
    fails or hangs); raise with what the first failing one said."""
    failed = []
    try:
        for proc, commands in started:
            out, _ = proc.communicate(commands, timeout=30)
            if proc.returncode != 0:
                failed.append(out.decode(errors="replace").strip() or f"ip exited {proc.returncode}")
    finally:
        for proc, _ in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if failed:
        raise OSError(f"setting up the hosts' network failed: ip: {failed[0]}")


def _enter_network(netns: str) -> None:
    fd = os.open(netns, os.O_RDONLY)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), "setns")
    finally:
        os.close(fd)


def _enter_new_network() -> None:
    _check(_libc.unshare(CLONE_NEWNET), "unshare network namespace")
    _loopback_up()


def _mount_opt_ml(opt_ml: Path, overlay_dir: Path) -> None:
    """Bind the host's tree on ``/opt/ml``; where ``/opt/ml`` does not exist, an overlay on
    ``/opt`` (its upper layer in the run's work dir) provides the mount point without touching
    the real ``/opt``."""
    if not os.path.isdir("/opt/ml"):
        upper, work = overlay_dir / "upper", overlay_dir / "work"
        (upper / "ml").mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        if not os.path.isdir("/opt"):
            raise OSError("neither /opt/ml nor /opt exists to mount the host's tree on")
        _mount("overlay", "/opt", "overlay", 0, f"lowerdir=/opt,upperdir={upper},workdir={work}")
    _mount(str(opt_ml), "/opt/ml", None, MS_BIND | MS_REC)
