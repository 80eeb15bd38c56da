"""What a killed harness leaves of a run on this machine, found and removed by ``harness gc``.

A harness stopped by SIGKILL (the OOM killer, ``kill -9``, a CI runner's hard timeout) cannot
clean up: its launchers run on, re-parented to init, its work dir stays, its record says
``running``. Containers carry labels for this; host processes carry a marker instead: every
launcher's environment holds ``HARNESS_RUN_ID`` (inherited by everything it starts), and the work
dir holds ``owner.json`` (the harness's pid and host, the run id, the record). A run whose owner
is gone is over: its processes are killed by process group, its work dir removed, its record
marked ``interrupted``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.record.models import Manifest, parse_manifest
from harness.record.run_record import now, write_json

RUN_ID_ENV = "HARNESS_RUN_ID"
OWNER_FILE = "owner.json"
#: Work dirs of the rungs that claim theirs: local and local-gpu (harness-local-*,
#: harness-local-gpu-*), sagemaker-local (the SDK's container root, harness-sagemaker-local-*).
WORK_PREFIXES = ("harness-local", "harness-sagemaker-local-")


def claim(work: Path, run_id: str, record_root: Path) -> None:
    """Mark ``work`` as this harness's, so that :func:`gc` can tell when it is orphaned."""
    write_json(
        work / OWNER_FILE,
        {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "run_id": run_id,
            "record": str(record_root),
            "started_at": now(),
        },
    )


def gc() -> list[str]:
    """Stop the processes, remove the work dirs and mark the records of local runs whose harness
    is gone; returns what was done, a line per run."""
    done = []
    tmp = Path(tempfile.gettempdir())
    for owner_file in sorted(path for prefix in WORK_PREFIXES for path in tmp.glob(f"{prefix}*/{OWNER_FILE}")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            owner = json.loads(owner_file.read_text())
            if _alive(owner):
                continue
            stopped = _stop_processes(str(owner["run_id"]), owner_file.parent)
            marked = _mark_record(Path(owner["record"]), owner)
            shutil.rmtree(owner_file.parent, ignore_errors=True)
            done.append(
                f"run {owner['run_id']}: {stopped} processes stopped, work dir {owner_file.parent} "
                f"removed{', record marked interrupted' if marked else ''}"
            )
    return done


def _alive(owner: dict[str, Any]) -> bool:
    if owner.get("hostname") != socket.gethostname():
        return True  # a shared /tmp seen from another machine: cannot tell, so keep it
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        pass
    return True


def _stop_processes(run_id: str, work: Path) -> int:
    """SIGKILL every process (and its process group) whose environment carries the run's id, or
    whose command line names its work dir (docker-compose, given the SDK's compose file there)."""
    marker = f"{RUN_ID_ENV}={run_id}".encode()
    named = str(work).encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError):
            if marker in (proc / "environ").read_bytes().split(b"\0") or any(
                named in part for part in (proc / "cmdline").read_bytes().split(b"\0")
            ):
                found.append(int(proc.name))
    for pid in found:
        # A launcher leads a process group of its own (start_new_session): the group goes with
        # it. Another process (compose, started by the harness) may share its group with the
        # shell or test runner that started the harness: it goes alone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    _wait_gone(found)  # a process still writing into the work dir would bring it back
    return len(found)


def _wait_gone(pids: list[int], seconds: float = 10.0) -> None:
    """Until each of ``pids`` is gone or a zombie (SIGKILL is delivered, not awaited)."""
    deadline = time.monotonic() + seconds
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
            except (OSError, IndexError):
                break
            if state in ("Z", "X"):
                break
            time.sleep(0.05)


def _mark_record(root: Path, owner: dict[str, Any]) -> bool:
    """A record left ``running`` by the killed harness becomes ``interrupted`` (still incomplete)."""
    manifest_path = root / "manifest.json"
    try:
        manifest = parse_manifest(json.loads(manifest_path.read_text()))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, Manifest) or manifest.status != "running":
        return False
    manifest.status, manifest.ended_at = "interrupted", now()
    manifest.error = f"the harness (pid {owner['pid']}) was killed; `harness gc` stopped what it left"
    write_json(manifest_path, manifest.as_file())
    return True
