"""What every rung the harness runs itself does for one SageMaker host: write its ``/opt/ml``
tree from the contract, record what it received, and collect what it left (exit code, failure
file, the ranks the probe saw)."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import importlib.util
import json
import os
import py_compile
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from harness.errors import RecordError
from harness.record.models import CheckpointsResult
from harness.record.run_record import RecordFiles, RecordWriter, file_tree, log_text, redact_env, write_json
from harness.spec import s3
from harness.spec.host_contract import OPT_ML, PLATFORM_DIRS, HostContract, failure_message
from harness.spec.job import JobSpec

#: The probe, put first on every process's PYTHONPATH (mounted read-only in containers).
PROBE_DIR = Path(__file__).resolve().parent.parent / "probe"


@functools.cache
def compiled_probe() -> Path:
    """:data:`PROBE_DIR` with the probe's bytecode written, once: every process a rung starts
    imports it, and where Python writes no bytecode itself (``PYTHONDONTWRITEBYTECODE``, a
    read-only mount in a container) each would compile its 2,000 lines anew, about 20 ms a
    process. Where the package cannot be written, it stays as it is."""
    for source in sorted(PROBE_DIR.glob("*.py")):
        with contextlib.suppress(OSError, py_compile.PyCompileError):
            py_compile.compile(str(source), cfile=importlib.util.cache_from_source(str(source)), doraise=True)
    return PROBE_DIR


def copy_source(job: JobSpec, destination: Path) -> None:
    """The job's ``source_dir`` as the container sees it at ``/opt/ml/code``."""
    if job.source_dir is not None:
        shutil.copytree(
            job.source_dir, destination, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", ".git")
        )


def write_host_tree(job: JobSpec, contract: HostContract, tree: Path) -> None:
    """The host's ``/opt/ml``: the platform's directories and config files, and the job's code
    where the launcher expects it (channels are the rung's business: linked or mounted)."""
    for sub in PLATFORM_DIRS:
        (tree / sub).mkdir(parents=True, exist_ok=True)
    for relative, content in contract.files.items():
        (tree / relative).write_text(content, encoding="utf-8")
    copy_source(job, tree / PurePosixPath(contract.cwd).relative_to(contract.opt_ml))


#: How a rung the harness runs itself gives the job its channels (``how``: the rung's means).
CHANNELS_FACT = (
    "{how} the local source directories; s3:// channels downloaded on the host before the job starts "
    "(File mode); ShardedByS3Key: host i of n gets every n-th key (or file of a local directory); "
    "checkpoints restored from checkpoint.s3_uri before the job, synced after it to the run's own prefix "
    "<parent>/harness-runs/<run id>/<name> beside it"
)


def s3_unsupported(job: JobSpec) -> str | None:
    """Why the job's ``s3://`` channels, output path or checkpoint location cannot be served
    here, or None."""
    if job.checkpoint is not None and job.checkpoint.s3_uri is not None and _checkpoint_sync(job) is None:
        return "checkpoint.local_path outside /opt/ml is not emulated: give a path under /opt/ml"
    reason = s3.missing_reason() if job.uses_s3 else None
    return f"the job uses S3 (channels, output_path or checkpoint): {reason}" if reason else None


def _checkpoint_sync(job: JobSpec) -> tuple[str, PurePosixPath] | None:
    """``CheckpointConfig``'s S3 prefix and its ``LocalPath`` inside a host's tree, when the job
    syncs checkpoints from a path under ``/opt/ml``; else None."""
    if job.checkpoint is None or job.checkpoint.s3_uri is None:
        return None
    local = PurePosixPath(job.checkpoint.local_path)
    return (job.checkpoint.s3_uri, local.relative_to(OPT_ML)) if local.is_relative_to(OPT_ML) else None


def restore_checkpoints(job: JobSpec, trees: dict[str, Path]) -> None:
    """What SageMaker does before the job starts: the checkpoint prefix copied into every host's
    ``LocalPath`` (nothing there on a first run). Downloaded once, then copied (not linked: a
    host rewriting a checkpoint in place must not change another host's)."""
    sync = _checkpoint_sync(job)
    if sync is None:
        return
    uri, where = sync
    first, *others = trees.values()
    s3.download(uri, first / where, allow_empty=True)
    for tree in others:
        shutil.copytree(first / where, tree / where, dirs_exist_ok=True)


def run_checkpoint_prefix(s3_uri: str, run_id: str) -> str:
    """Where a run's checkpoints go: ``<parent>/harness-runs/<run id>/<name>`` beside the job's
    prefix ``<parent>/<name>``, never under it (nor sharing its first characters), so that
    restoring the job's prefix never brings back another run's files."""
    location = s3.S3Uri.parse(s3_uri)
    parent, _, name = location.key.rstrip("/").rpartition("/")
    return str(s3.S3Uri(location.bucket, parent).join("harness-runs", run_id, name or "checkpoints"))


def save_checkpoints(job: JobSpec, trees: dict[str, Path], record: RecordWriter) -> None:
    """Every host's ``LocalPath`` uploaded to one prefix, as SageMaker syncs it (all instances share
    it; a key several hosts write is the last one's). The prefix is the run's own
    (:func:`run_checkpoint_prefix`), not ``s3_uri``: a later rung restoring from ``s3_uri`` would
    otherwise resume from this run. The manifest's ``checkpoints`` lists the keys with the hosts
    that wrote them, and the clashes (those whose content differed between hosts lost data)."""
    sync = _checkpoint_sync(job)
    if sync is None:
        return
    uri, where = sync
    prefix = run_checkpoint_prefix(uri, record.root.name)
    digests: dict[str, dict[str, str]] = {}  # key -> host -> sha256
    for host, tree in trees.items():
        if (tree / where).is_dir():
            s3.upload_tree(tree / where, prefix)
            for key, entry in file_tree(tree / where).items():
                digests.setdefault(key, {})[host] = entry["sha256"]
    clashes = {key: sorted(hosts) for key, hosts in digests.items() if len(hosts) > 1}
    record.update(
        checkpoints=CheckpointsResult(
            s3_uri=prefix,
            files={key: sorted(hosts) for key, hosts in digests.items()},
            clashes=clashes,
            clashes_with_different_content=sorted(k for k in clashes if len(set(digests[k].values())) > 1),
        )
    )


def stage_channels(job: JobSpec, work: Path, record: RecordWriter) -> dict[str, dict[str, Path]]:
    """Each host's channel directories, before the job starts: a local source as it is; an
    ``s3://`` channel downloaded as the platform downloads it in File mode. Under
    ``ShardedByS3Key`` each host gets its own share, of the keys or of a local directory's files
    (SageMaker would shard the directory once the SDK uploaded it). What each host received is
    recorded in ``hosts/<host>/received/channels.json``."""
    staged: dict[str, dict[str, Path]] = {host: {} for host in job.hosts}
    received: dict[str, dict[str, object]] = {host: {} for host in job.hosts}
    for name, channel in job.channels.items():
        listing = None if channel.is_s3 else _listing(Path(channel.source))
        sharded = channel.distribution == "ShardedByS3Key" and len(job.hosts) > 1
        shares = {host: (index, len(job.hosts)) for index, host in enumerate(job.hosts)} if sharded else {"all": None}
        for share, shard in shares.items():
            if listing is None:
                directory = work / "s3" / name / share
                files = s3.download(channel.source, directory, shard=shard)
            elif shard is None:
                directory, files = Path(channel.source), listing
            else:
                directory = work / "shards" / name / share
                files = _share_of(Path(channel.source), listing, directory, shard)
            for host in job.hosts if share == "all" else [share]:
                staged[host][name] = directory
                received[host][name] = {"source": channel.source, "distribution": channel.distribution, "files": files}
    for host, channels in received.items():
        write_json(record.host_dir(host) / "received" / "channels.json", channels)
    return staged


def _share_of(source: Path, listing: dict[str, int], directory: Path, shard: tuple[int, int]) -> dict[str, int]:
    """A host's share of a local directory (``listing``: its files) under ``ShardedByS3Key``, as it
    would be once uploaded (every n-th file in key order), hard-linked where the file system
    allows, else copied."""
    index, count = shard
    files = dict(sorted(listing.items())[index::count])
    for relative in files:
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source / relative, target)
        except OSError:
            shutil.copy2(source / relative, target)
    directory.mkdir(parents=True, exist_ok=True)
    return files


def _listing(directory: Path) -> dict[str, int]:
    return {p.relative_to(directory).as_posix(): p.stat().st_size for p in sorted(directory.rglob("*")) if p.is_file()}


def record_received(record: RecordWriter, contract: HostContract, env: dict[str, str]) -> None:
    """``hosts/<host>/received/``: the command, the environment (redacted) and the config files."""
    received = record.host_dir(contract.host) / "received"
    write_json(received / "command.json", {"argv": contract.command, "cwd": str(contract.cwd)})
    write_json(received / "env.json", redact_env(env))
    for relative, content in contract.files.items():
        (received / PurePosixPath(relative).name).write_text(content, encoding="utf-8")


def collect_failure(
    job: JobSpec, contract: HostContract, tree: Path, record: RecordWriter, code: int, started: str, ended: str
) -> None:
    """Exit code and ``/opt/ml/output/failure`` of one host; where the job wrote no failure file,
    the one its launcher would have written (marked ``failure_written_by: launcher``)."""
    host = contract.host
    failure_file = tree / "output" / "failure"
    failure = failure_file.read_text(errors="replace") if failure_file.is_file() else None
    written_by = "job" if failure else None
    if failure is None and code != 0:
        log = (record.host_dir(host) / "log.txt").read_text(errors="replace").splitlines()
        errors = [log_text(line) for line in log if "Error" in line or "error" in line][-5:]
        failure, written_by = failure_message(job, code, contract.command, errors), "launcher"
    if failure is not None:
        (record.host_dir(host) / "failure").write_text(failure)
    record.host_result(
        host,
        exit_code=code,
        started_at=started,
        ended_at=ended,
        failure_reason=failure[:1024] if failure else None,
        failure_written_by=written_by,
    )


def artifact_overview(summary: dict[str, dict[str, object]]) -> dict[str, object]:
    return {
        name: {"files": len(info["files"]), "clashes": info["clashes"]}  # type: ignore[arg-type]
        for name, info in summary.items()
    }


def ranks_from_probe(record_root: Path) -> dict[str, object]:
    """Per global rank: the host and pid that ran it, from the probe's process records.

    A rank's process is the one that holds its ``RANK`` and was not started by multiprocessing
    (a DataLoader worker inherits ``RANK`` and writes a process record of its own). Its
    ``ended_at`` is the probe's, written at exit; a process that leaves through ``os._exit``
    (torchrun workers often do, to skip a crash in the interpreter's finalisation) runs no exit
    handler, so the probe could not write it: it is then the rank's last sign of life, the latest
    of its heartbeat, its last event and its last log line, and ``ended_at_from`` says which."""
    files = RecordFiles(record_root)
    try:
        processes = files.processes()
    except RecordError:  # a damaged process file: the diff says which; the run is not failed for it
        return {}
    chosen: dict[str, dict[str, Any]] = {}
    for info in processes:
        rank = info.get("rank")
        if rank is None or not str(rank).isdigit():
            continue
        current = chosen.get(str(rank))
        if current is None or (current.get("mp_target") is not None and info.get("mp_target") is None):
            chosen[str(rank)] = info
    ranks: dict[str, object] = {}
    for rank, info in sorted(chosen.items(), key=lambda item: int(item[0])):
        entry = {key: info.get(key) for key in ("host", "pid", "local_rank", "ended_at", "exception")}
        if entry["ended_at"] is None:
            last_seen = _last_sign_of_life(files, int(rank))
            if last_seen is not None:
                entry["ended_at"], entry["ended_at_from"] = last_seen
        else:
            entry["ended_at_from"] = "probe"
        ranks[rank] = entry
    return ranks


def _last_sign_of_life(files: RecordFiles, rank: int) -> tuple[str, str] | None:
    """(UTC time, what told it) of the last thing ``rank`` did: the latest of its heartbeat's
    time, its last event's time and its last log line's timestamp; None when it left nothing."""
    ranks = files.root / "ranks"
    seen: list[tuple[float, str]] = []
    for what, text in (
        ("heartbeat", _text(ranks / f"rank-{rank}.heartbeat")),  # one small JSON object
        ("last event", _last_line(ranks / f"rank-{rank}.jsonl")),
    ):  # one JSON event a line
        try:
            t = json.loads(text or "{}").get("t")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(t, int | float) and not isinstance(t, bool):
            seen.append((float(t), what))
    stamp = _last_line(ranks / f"rank-{rank}.log").partition(" ")[0]
    with contextlib.suppress(ValueError):
        seen.append((dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp(), "last log line"))
    if not seen:
        return None
    when, source = max(seen)
    return dt.datetime.fromtimestamp(when, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"), source


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _last_line(path: Path) -> str:
    """The last complete, non-empty line of ``path`` (reads only its end; a line cut short by a
    kill, with no newline, does not count)."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 65536))
            lines = [line for line in handle.read().split(b"\n")[:-1] if line.strip()]
    except OSError:
        return ""
    return lines[-1].decode("utf-8", "replace") if lines else ""
