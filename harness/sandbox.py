"""Private Linux namespaces that make one machine look like a SageMaker cluster.

The ``local`` rungs run every host's processes on this machine, yet jobs expect what SageMaker
gives them: ``algo-1`` … ``algo-N`` resolve, ``MASTER_PORT`` 7777 is free, and ``/opt/ml`` is the
host's own tree. One network namespace per run (loopback only, so concurrent runs never collide
on ports and nothing listens on the machine's real interfaces) and one mount namespace per host
(a private ``/etc/hosts`` and that host's tree bind-mounted on ``/opt/ml``) give exactly that,
without writing the machine's real ``/opt/ml`` or ``/etc/hosts``.

This needs ``CAP_SYS_ADMIN`` (root, as in CI and in containers started ``--privileged``). Without
it the rung runs degraded (:func:`unavailable_reason` says why) and the run record says so.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_BIND, MS_REC, MS_PRIVATE = 1, 4096, 16384, 1 << 18
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1

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


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))


def hosts_file(hosts: list[str]) -> str:
    """``/etc/hosts`` for a run: every SageMaker host name on loopback of the run's namespace."""
    return f"127.0.0.1\tlocalhost\n127.0.0.1\t{' '.join(hosts)}\n::1\tlocalhost ip6-localhost\n"


class RunNetwork:
    """A network namespace that lives as long as the run: held open by a tiny anchor process.

    The anchor exits on its own when the harness dies (its stdin closes), so a killed harness
    leaves no namespace behind.
    """

    def __init__(self) -> None:
        self._anchor: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RunNetwork:
        self._anchor = subprocess.Popen(
            [sys.executable, "-S", "-c", "import sys; sys.stdout.write('up\\n'); sys.stdout.flush(); sys.stdin.read()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            preexec_fn=_enter_new_network,
            start_new_session=True,
        )
        assert self._anchor.stdout is not None
        if self._anchor.stdout.readline() != b"up\n":
            self.__exit__(None, None, None)
            raise OSError("the network namespace anchor did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._anchor is not None:
            self._anchor.kill()
            self._anchor.wait()
            self._anchor = None

    @property
    def netns_path(self) -> str:
        assert self._anchor is not None, "RunNetwork used outside its `with` block"
        return f"/proc/{self._anchor.pid}/ns/net"

    def host_entry(
        self, *, host: str, opt_ml: Path, hosts_path: Path, overlay_dir: Path, cwd: str
    ) -> Callable[[], None]:
        """A ``preexec_fn`` that puts a child into this run's network and its host's mounts."""
        netns = self.netns_path

        def enter() -> None:
            fd = os.open(netns, os.O_RDONLY)
            _check(_libc.setns(fd, CLONE_NEWNET), "setns")
            os.close(fd)
            _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare mount and UTS namespaces")
            # gethostname() returns algo-N, as the deep learning containers' LD_PRELOAD shim makes it.
            _check(_libc.sethostname(host.encode(), len(host)), "sethostname")
            _mount("none", "/", None, MS_REC | MS_PRIVATE)
            _mount(str(hosts_path), "/etc/hosts", None, MS_BIND)
            _mount_opt_ml(opt_ml, overlay_dir)
            os.chdir(cwd)  # as the job sees it (/opt/ml/code), not the work dir behind the mount

        return enter


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
