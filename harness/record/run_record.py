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
from typing import Any

from pydantic import ValidationError

from harness._version import __version__
from harness.errors import RecordError
from harness.record.models import (
    HostResult,
    JobSection,
    Manifest,
    Topology,
    manifest_problems,
    parse_manifest,
    process_problems,
    said,
)
from harness.record.models import Status as Status  # the record's statuses, as readers import them
from harness.record.models import json_kind as _kind
from harness.spec.workload import Workload

FORMAT_VERSION = 1
MANIFEST = "manifest.json"

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


def _redacted(section: dict[str, Any]) -> dict[str, Any]:
    """A spec's section of the manifest, the values of its ``environment``'s secret-looking names redacted."""
    environment = section.get("environment")
    return {**section, "environment": redact_env(environment)} if isinstance(environment, dict) else section


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


#: ``README.md`` of every record, written when the record starts: a short map of the files. The
#: reference is docs/run-record.md (a test checks that every path named here is documented there).
README_TEMPLATE = """\
# Run record {run_id}

Job `{job}` on the `{rung}` rung, {hosts} host(s) x {processes} process(es); started {started_at}.
Record format {format_version}, written by harness {harness_version}; full reference:
docs/run-record.md in the harness's repository. `harness show {run_id}` summarises it.

| path | what it holds |
|---|---|
| `manifest.json` | the run: job, topology, status, times, exit code per host and rank, the rung's facts |
| `metrics.json` | the metrics parsed from the logs: {{name: {{source: [values]}}}}, sources are hosts and rank-N |
| `hosts/<host>/log.txt` | the host's launcher output (stdout and stderr), each line timestamped (UTC) |
| `hosts/<host>/received/` | what the host was given: command, environment (secrets redacted), config files, channels |
| `hosts/<host>/failure` | the host's /opt/ml/output/failure, when it failed |
| `hosts/<host>/fingerprint.json` | the host's Python, packages, CPUs, /dev/shm, ulimits, torch/CUDA (from the probe) |
| `ranks/rank-<N>.log` | rank N's own output, timestamped |
| `ranks/rank-<N>.jsonl` | rank N's events: dist_init, collective, batch, params, write |
| `ranks/rank-<N>.heartbeat` | rank N's last progress counters |
| `ranks/rank-<N>.stacks.txt` | rank N's stacks, dumped when the job hung (kept only when not empty) |
| `processes/<host>-<pid>.json` | every Python process the probe saw: argv, environment, exit code, exception |
| `artifacts/model.tar.gz` | every host's /opt/ml/model, packed as SageMaker packs it |
| `artifacts/output.tar.gz` | the same for /opt/ml/output/data |
| `artifacts/summary.json` | per archive: files with size, sha256 and the hosts that wrote them |
| `sdk/` | sagemaker-local only: the SDK's docker-compose.yaml and compose's output |
| `sagemaker/describe_training_job.json` | sagemaker only: the job's last DescribeTrainingJob answer |
"""


class RecordWriter:
    """Writes one run record; owned by the rung while it runs."""

    def __init__(self, root: Path, job: Workload, rung: str, *, run_id: str | None = None) -> None:
        self.root = root
        self.manifest = Manifest(
            format_version=FORMAT_VERSION,
            harness_version=__version__,
            run_id=run_id or root.name,
            rung=rung,
            workload=job.kind,
            job=JobSection.model_validate(_redacted(job.record_section())),
            topology=Topology.model_validate(job.topology()),
            started_at=now(),
            ended_at=None,
            status="running",
            complete=False,
            hosts={},
            ranks={},
            rung_facts={},
        )

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.flush()
        (self.root / "README.md").write_text(self.readme(), encoding="utf-8")

    def readme(self) -> str:
        """The record's ``README.md``: what each file is (:data:`README_TEMPLATE`)."""
        m = self.manifest
        return README_TEMPLATE.format(
            run_id=m.run_id,
            job=m.job.name,
            rung=m.rung,
            hosts=len(m.topology.hosts),
            processes=m.topology.processes_per_host,
            started_at=m.started_at,
            format_version=m.format_version,
            harness_version=m.harness_version,
        )

    def flush(self) -> None:
        """The manifest, checked against its format first: a rung that breaks the format fails
        here, where it wrote, not in a reader later."""
        data = self.manifest.as_file()
        self._refuse(manifest_problems(data))
        write_json(self.root / MANIFEST, data)

    def update(self, **parts: Any) -> None:
        """Set parts of the manifest (``artifacts=...``, ``error=...``) and write it; a value not
        of the part's type fails here, in the rung that set it."""
        try:
            for key, value in parts.items():
                setattr(self.manifest, key, value)
        except ValidationError as exc:
            self._refuse(said(exc))
        self.flush()

    def host_dir(self, host: str) -> Path:
        path = self.root / "hosts" / host
        path.mkdir(parents=True, exist_ok=True)
        return path

    def set_fact(self, key: str, value: Any) -> None:
        self.manifest.rung_facts[key] = value
        self.flush()

    def host_result(self, host: str, **result: Any) -> None:
        try:
            current = self.manifest.hosts.setdefault(host, HostResult())
            for key, value in result.items():
                setattr(current, key, value)
        except ValidationError as exc:
            self._refuse([f"hosts.{host}.{problem}" for problem in said(exc)])
        self.flush()

    def finish(self, status: Status, *, error: str | None = None) -> None:
        self.manifest.status, self.manifest.ended_at, self.manifest.complete = status, now(), status != "running"
        if error:
            self.manifest.error = error
        self._drop_empty_stacks()
        self.flush()

    def _refuse(self, problems: list[str]) -> None:
        if problems:
            raise RecordError(
                f"{self.root / MANIFEST}: the harness was about to write {problems[0]}",
                hint="a bug of the rung that set this key: report it with the record",
            )

    def _drop_empty_stacks(self) -> None:
        """Every rank opens ``rank-N.stacks.txt`` in case it hangs; those no dump was written
        into say nothing, and are removed (a file that cannot be removed is left as it is)."""
        for path in RecordFiles(self.root).rank_stacks().values():
            try:
                if path.stat().st_size == 0:
                    path.unlink()
            except OSError:
                continue


_DAMAGED = "the record is damaged or was not written by this harness: run the job again for a new one"


def loss_ledger_steps(event: dict[str, Any]) -> list[dict[str, Any]]:
    """A ``steps`` event of the loss ledger (one list per field) as one dict per step; a field
    the event lacks is None in each."""
    if event.get("kind") != "steps" or not isinstance(event.get("step"), list):
        return []
    fields = ("step", "loss", "backwards", "samples", "grad_norm", "lr")
    columns = [event[name] if isinstance(event.get(name), list) else [] for name in fields]
    return [
        {name: column[i] if i < len(column) else None for name, column in zip(fields, columns, strict=True)}
        for i in range(len(event["step"]))
    ]


def is_number(value: Any) -> bool:
    """A JSON number (not a boolean, which Python counts as an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_json_file(path: Path, *, what: str = "file") -> Any:
    """``path`` parsed as JSON, or :class:`RecordError` naming the file and what is wrong with it
    (cut short, not JSON, not a file, unreadable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise RecordError(f"{path}: a directory where the record keeps a {what}", hint=_DAMAGED) from None
    except UnicodeDecodeError:
        raise RecordError(f"{path}: not a {what}: not UTF-8 text", hint=_DAMAGED) from None
    except OSError as exc:
        raise RecordError(
            f"{path}: cannot read the {what}: {exc.strerror or exc}", hint="check the record's path and permissions"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        cut = not text.strip() or not text.rstrip().endswith(("}", "]"))  # the harness ends each file with one
        problem = "cut short (truncated)" if cut else "not valid JSON"
        where = f"{exc.msg.removesuffix(' at')} at line {exc.lineno}, column {exc.colno}"
        raise RecordError(f"{path}: the {what} is {problem}: {where}", hint=_DAMAGED) from None


def _read_object(path: Path, what: str) -> dict[str, Any]:
    data = read_json_file(path, what=what)
    if not isinstance(data, dict):
        raise RecordError(f"{path}: the {what} should hold a JSON object, not {_kind(data)}", hint=_DAMAGED)
    return data


@dataclass(frozen=True)
class RecordFiles:
    """The files of a record directory, by what they hold: the one place that knows the layout
    (docs/run-record.md). Needs no manifest, so a rung can read a record it is still writing.

    Every reader checks what it reads: a file cut short, not JSON, or not of the documented shape
    is a :class:`RecordError` that names the file and what is wrong, never a stray exception in
    whatever reads it next."""

    root: Path

    def host_log(self, host: str) -> Path:
        return self.root / "hosts" / host / "log.txt"

    def rank_logs(self) -> dict[int, Path]:
        """``ranks/rank-N.log``: each rank's own output."""
        return self._rank_files(".log")

    def rank_stacks(self) -> dict[int, Path]:
        """``ranks/rank-N.stacks.txt``: the stacks each rank dumped when the job hung."""
        return self._rank_files(".stacks.txt")

    def rank_event_files(self) -> dict[int, Path]:
        """``ranks/rank-N.jsonl``: the files of each rank's events."""
        return self._rank_files(".jsonl")

    def rank_events(self) -> dict[int, list[dict[str, Any]]]:
        """``ranks/rank-N.jsonl``: each rank's probe events, in order."""
        return {rank: list(events) for rank, events in self.iter_rank_events().items()}

    def iter_rank_events(self) -> dict[int, Iterator[dict[str, Any]]]:
        """Each rank's events, read lazily: a reader that wants the first few stops there."""
        return {rank: read_events(path) for rank, path in self._rank_files(".jsonl").items()}

    def heartbeats(self) -> dict[int, dict[str, Any]]:
        """``ranks/rank-N.heartbeat``: each rank's last progress. A heartbeat the probe is
        rewriting just now (or one damaged) is left out, not an error: the next read finds it."""
        beats = {}
        for rank, path in self._rank_files(".heartbeat").items():
            try:
                beat = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(beat, dict):
                beats[rank] = beat
        return beats

    def processes(self) -> list[dict[str, Any]]:
        """``processes/*.json``: every Python process the probe saw, by host and pid."""
        found = []
        for path in sorted((self.root / "processes").glob("*.json")):
            info = _read_object(path, "process record")
            _raise_problems(path, process_problems(info))
            found.append(info)
        return found

    def _rank_files(self, suffix: str) -> dict[int, Path]:
        found = {}
        for path in (self.root / "ranks").glob(f"rank-*{suffix}"):
            number = path.name.removeprefix("rank-").removesuffix(suffix)
            if number.isdigit():
                found[int(number)] = path
        return dict(sorted(found.items()))


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON events of one ``.jsonl`` file, in order. A rank killed while writing leaves its
    last line cut short: that line is dropped. Any other line that is not a JSON object with a
    ``kind`` is a broken record. The probe writes most batches as rows of one ``batches`` event:
    each row is read as the ``batch`` event it stands for."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                if not line.endswith("\n"):
                    return
                raise RecordError(f"{path}:{number}: not a JSON event", hint=_DAMAGED) from None
            if not isinstance(event, dict) or not isinstance(event.get("kind"), str):
                what = 'has no "kind"' if isinstance(event, dict) else f"is {_kind(event)}, not an object"
                raise RecordError(f"{path}:{number}: not a probe event: the line {what}", hint=_DAMAGED)
            if event["kind"] == "batches":
                yield from _batch_rows(event, f"{path}:{number}")
            else:
                yield event


def _batch_rows(event: dict[str, Any], where: str) -> Iterator[dict[str, Any]]:
    columns, rows = event.get("columns"), event.get("rows")
    if (
        not isinstance(columns, list)
        or not isinstance(rows, list)
        or not all(isinstance(row, list) and len(row) == len(columns) for row in rows)
    ):
        raise RecordError(f"{where}: a batches event without its columns and rows", hint=_DAMAGED)
    for row in rows:
        yield {"t": event.get("t"), "kind": "batch", **dict(zip(columns, row, strict=True))}


def metrics_problems(metrics: Any) -> list[str]:
    """What is wrong with a ``metrics.json``: ``{name: {source: [numbers]}}``."""
    if not isinstance(metrics, dict):
        return [f"expected an object {{metric: {{source: [values]}}}}, got {_kind(metrics)}"]
    problems = []
    for name, sources in metrics.items():
        if not isinstance(sources, dict):
            problems.append(f"{name}: expected an object {{source: [values]}}, got {_kind(sources)}")
            continue
        for source, values in sources.items():
            if not isinstance(values, list):
                problems.append(f"{name}.{source}: expected a list of numbers, got {_kind(values)}")
                continue
            bad = next(((i, v) for i, v in enumerate(values) if not is_number(v)), None)
            if bad is not None:
                problems.append(f"{name}.{source}[{bad[0]}]: expected a number, got {_kind(bad[1])}")
    return problems


def _raise_problems(path: Path, problems: list[str]) -> None:
    if problems:
        raise _damaged(path, problems)


def _damaged(path: Path, problems: list[str]) -> RecordError:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return RecordError(f"{path}: {problems[0]}{more}", hint=_DAMAGED)


@dataclass(frozen=True)
class RunRecord(RecordFiles):
    """A run record read back from disk; the only thing diffs and reports consume."""

    manifest: Manifest

    @classmethod
    def load(cls, root: Path) -> RunRecord:
        """The record at ``root``, its manifest checked against the documented format
        (:class:`harness.record.models.Manifest`): a missing key or a value of the wrong type is a
        :class:`RecordError` naming the file and the key."""
        manifest_path = root / MANIFEST
        if not root.is_dir():
            what = "no such directory" if not root.exists() else "a file, not a record directory"
            raise RecordError(f"{root}: not a run record ({what})", hint="pass the directory `harness run` printed")
        if not manifest_path.is_file():
            raise RecordError(
                f"{root}: not a run record (no {MANIFEST})", hint="pass the directory `harness run` printed"
            )
        manifest = read_json_file(manifest_path, what="manifest")
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        if not isinstance(manifest, dict):
            raise RecordError(
                f"{manifest_path}: the manifest should hold a JSON object, not {_kind(manifest)}", hint=_DAMAGED
            )
        if version != FORMAT_VERSION:
            raise RecordError(
                f"{root}: record format {version!r}, this harness reads {FORMAT_VERSION}",
                hint=f"re-run the job with harness {__version__}",
            )
        parsed = parse_manifest(manifest)
        if isinstance(parsed, list):
            raise _damaged(manifest_path, parsed)
        return cls(root, parsed)

    def rank_events(self) -> dict[int, list[dict[str, Any]]]:
        """Each rank's probe events, read once: a record read back is complete, and most checks
        read every rank's events (judging 512 ranks parsed them ten times over)."""
        cached = vars(self).get("_rank_events")
        if cached is None:
            cached = super().rank_events()
            object.__setattr__(self, "_rank_events", cached)
        return {rank: list(events) for rank, events in cached.items()}

    def processes(self) -> list[dict[str, Any]]:
        """Every process record, read once (see :meth:`rank_events`)."""
        cached = vars(self).get("_processes")
        if cached is None:
            cached = super().processes()
            object.__setattr__(self, "_processes", cached)
        return [dict(process) for process in cached]

    @property
    def rung(self) -> str:
        return self.manifest.rung

    @property
    def status(self) -> str:
        return self.manifest.status

    @property
    def hosts(self) -> list[str]:
        return list(self.manifest.topology.hosts)

    def metrics(self) -> dict[str, dict[str, list[float]]]:
        """``metrics.json``, checked: every value a number (``{}`` when the run wrote none)."""
        path = self.root / "metrics.json"
        if not path.exists():
            return {}
        metrics = read_json_file(path, what="metrics file")
        _raise_problems(path, metrics_problems(metrics))
        return metrics  # type: ignore[no-any-return]

    def read_json(self, relative: str) -> Any:
        """A JSON file of the record (every one holds an object), or None when there is none."""
        path = self.root / relative
        if not path.exists():
            return None
        data = _read_object(path, "file")
        if relative == "artifacts/summary.json":
            _raise_problems(path, summary_problems(data))
        return data


def summary_problems(summary: dict[str, Any]) -> list[str]:
    """What is wrong with ``artifacts/summary.json``: per archive, ``files`` {name: {size, sha256}}."""
    problems = []
    for archive, info in summary.items():
        if not isinstance(info, dict):
            problems.append(f"{archive}: expected an object, got {_kind(info)}")
            continue
        files = info.get("files", {})
        if not isinstance(files, dict):
            problems.append(f"{archive}.files: expected an object, got {_kind(files)}")
            continue
        for name, entry in files.items():
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("sha256"), str)
                or not is_number(entry.get("size"))
            ):
                problems.append(f"{archive}.files.{name}: expected {{size, sha256}}, got {_kind(entry)}")
        if not isinstance(info.get("clashes", {}), dict):
            problems.append(f"{archive}.clashes: expected an object, got {_kind(info.get('clashes'))}")
        if info.get("bytes") is not None and not is_number(info.get("bytes")):
            problems.append(f"{archive}.bytes: expected a number, got {_kind(info.get('bytes'))}")
    return problems
