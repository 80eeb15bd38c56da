"""The run record: a durable, documented directory per run (format in docs/run-record.md).

A record is written while the run happens, never only at the end: the manifest is created with
``status: running`` before the first process starts and rewritten atomically when it changes, so
a crash or Ctrl-C leaves a readable record marked incomplete. Readers (diff, show, reports) only
ever see complete files: every JSON file is written to a temporary name and renamed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import secrets
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from harness._version import __version__
from harness.errors import RecordError
from harness.jobspec import JobSpec

FORMAT_VERSION = 1
MANIFEST = "manifest.json"

Status = Literal["running", "succeeded", "failed", "timeout", "hung", "interrupted", "error"]
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|_KEY$|^AWS_ACCESS_KEY_ID$", re.I)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def log_text(line: str) -> str:
    """A record log line (``<UTC time>Z <line>``) as the job printed it, without its timestamp."""
    stamp, sep, text = line.partition(" ")
    return text if sep and stamp[:4].isdigit() and stamp.endswith("Z") else line


def new_run_id(job_name: str, rung: str) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{job_name}-{rung}-{stamp}-{secrets.token_hex(3)}"


def redact_env(env: dict[str, str]) -> dict[str, str]:
    """Environment as recorded: values of secret-looking names are replaced, never stored."""
    return {key: ("<redacted>" if _SECRET_NAME.search(key) else value) for key, value in env.items()}


def secret_values(env: dict[str, str]) -> tuple[bytes, ...]:
    """The values of ``env``'s secret-looking variables (8 characters and up): what a job that
    prints its environment would put into its logs."""
    return tuple(value.encode() for key, value in env.items() if _SECRET_NAME.search(key) and len(value) >= 8)


def scrub(data: bytes, secrets: tuple[bytes, ...]) -> bytes:
    """``data`` with every secret value replaced by ``<redacted>`` (log lines, before they are written)."""
    for secret in secrets:
        if secret in data:
            data = data.replace(secret, b"<redacted>")
    return data


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write: readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def file_tree(root: Path) -> dict[str, dict[str, Any]]:
    """Every regular file under ``root`` with its size and sha256, keyed by relative path."""
    tree = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        tree[path.relative_to(root).as_posix()] = {"size": path.stat().st_size, "sha256": digest.hexdigest()}
    return tree


def pack_like_sagemaker(source: Path, archive: Path) -> None:
    """``model.tar.gz`` as SageMaker packs ``/opt/ml/model``: gzip'd tar, members relative to it."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(source.rglob("*")):
            tar.add(path, arcname=path.relative_to(source).as_posix(), recursive=False)


class RecordWriter:
    """Writes one run record; owned by the rung while it runs."""

    def __init__(self, root: Path, job: JobSpec, rung: str, *, run_id: str | None = None) -> None:
        self.root = root
        self.manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "harness_version": __version__,
            "run_id": run_id or root.name,
            "rung": rung,
            "job": {**job.model_dump(mode="json"), "environment": redact_env(job.environment)},
            "topology": {
                "hosts": job.hosts,
                "processes_per_host": job.processes_per_host,
                "world_size": job.world_size,
                "distribution": job.distribution,
                "launcher": job.launcher,
            },
            "started_at": now(),
            "ended_at": None,
            "status": "running",
            "complete": False,
            "hosts": {},
            "ranks": {},
            "rung_facts": {},
        }

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.flush()

    def flush(self) -> None:
        write_json(self.root / MANIFEST, self.manifest)

    def host_dir(self, host: str) -> Path:
        path = self.root / "hosts" / host
        path.mkdir(parents=True, exist_ok=True)
        return path

    def set_fact(self, key: str, value: Any) -> None:
        self.manifest["rung_facts"][key] = value
        self.flush()

    def host_result(self, host: str, **result: Any) -> None:
        self.manifest["hosts"].setdefault(host, {}).update(result)
        self.flush()

    def finish(self, status: Status, *, error: str | None = None) -> None:
        self.manifest.update(status=status, ended_at=now(), complete=status != "running")
        if error:
            self.manifest["error"] = error
        self.flush()


@dataclass(frozen=True)
class RecordFiles:
    """The files of a record directory, by what they hold: the one place that knows the layout
    (docs/run-record.md). Needs no manifest, so a rung can read a record it is still writing."""

    root: Path

    def host_log(self, host: str) -> Path:
        return self.root / "hosts" / host / "log.txt"

    def rank_logs(self) -> dict[int, Path]:
        """``ranks/rank-N.log``: each rank's own output."""
        return self._rank_files(".log")

    def rank_stacks(self) -> dict[int, Path]:
        """``ranks/rank-N.stacks.txt``: the stacks each rank dumped when the job hung."""
        return self._rank_files(".stacks.txt")

    def rank_events(self) -> dict[int, list[dict[str, Any]]]:
        """``ranks/rank-N.jsonl``: each rank's probe events, in order."""
        return {rank: list(events) for rank, events in self.iter_rank_events().items()}

    def iter_rank_events(self) -> dict[int, Iterator[dict[str, Any]]]:
        """Each rank's events, read lazily: a reader that wants the first few stops there."""
        return {rank: read_events(path) for rank, path in self._rank_files(".jsonl").items()}

    def heartbeats(self) -> dict[int, dict[str, Any]]:
        """``ranks/rank-N.heartbeat``: each rank's last progress. A heartbeat the probe is
        rewriting just now is left out, not an error: the next read finds it."""
        beats = {}
        for rank, path in self._rank_files(".heartbeat").items():
            try:
                beats[rank] = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
        return beats

    def processes(self) -> list[dict[str, Any]]:
        """``processes/*.json``: every Python process the probe saw, by host and pid."""
        return [json.loads(path.read_text()) for path in sorted((self.root / "processes").glob("*.json"))]

    def _rank_files(self, suffix: str) -> dict[int, Path]:
        found = {}
        for path in (self.root / "ranks").glob(f"rank-*{suffix}"):
            number = path.name.removeprefix("rank-").removesuffix(suffix)
            if number.isdigit():
                found[int(number)] = path
        return dict(sorted(found.items()))


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON events of one ``.jsonl`` file, in order. A rank killed while writing leaves its
    last line cut short: that line is dropped. Any other line that is not JSON is a broken record."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                if not line.endswith("\n"):
                    return
                raise RecordError(f"{path}:{number}: not a JSON event") from None


@dataclass(frozen=True)
class RunRecord(RecordFiles):
    """A run record read back from disk; the only thing diffs and reports consume."""

    manifest: dict[str, Any]

    @classmethod
    def load(cls, root: Path) -> RunRecord:
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise RecordError(
                f"{root}: not a run record (no {MANIFEST})", hint="pass the directory `harness run` printed"
            )
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RecordError(f"{manifest_path}: unreadable manifest: {exc}") from None
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        if version != FORMAT_VERSION:
            raise RecordError(
                f"{root}: record format {version!r}, this harness reads {FORMAT_VERSION}",
                hint=f"re-run the job with harness {__version__}",
            )
        return cls(root, manifest)

    @property
    def rung(self) -> str:
        return str(self.manifest["rung"])

    @property
    def status(self) -> str:
        return str(self.manifest["status"])

    @property
    def hosts(self) -> list[str]:
        return list(self.manifest["topology"]["hosts"])

    def metrics(self) -> dict[str, dict[str, list[float]]]:
        path = self.root / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def read_json(self, relative: str) -> Any:
        path = self.root / relative
        return json.loads(path.read_text()) if path.is_file() else None
