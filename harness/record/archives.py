"""Artifacts as SageMaker leaves them: every host's ``/opt/ml/model`` and ``output/data`` merged
into one ``model.tar.gz`` and ``output.tar.gz``.

The service aggregates the directories of all hosts into one archive and leaves name clashes to
the user (AWS developer guide, "Output" and "Storage tips" pages); local mode copies host after
host, so a later host overwrites an earlier one. The harness merges the same way and records
every clash with the hosts involved, since a clash is a likely cause of a divergent model.

Every archive the harness opens (a job's ``output.tar.gz`` from the service, a record's archives
in a diff) is read through :func:`capped_members`: an archive whose members add up to more than
:data:`MAX_ARCHIVE_BYTES` or :data:`MAX_ARCHIVE_MEMBERS` is refused with :class:`ArchiveRefused`
before the member over the cap is written, so a gzip bomb (2 GiB of zeros in 9 MB) fills no disk.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.record.run_record import file_tree, pack_like_sagemaker, write_json

#: Directory under ``/opt/ml`` → archive name, as the service uploads them.
ARCHIVES = {"model": "model.tar.gz", "output/data": "output.tar.gz"}
#: The most the harness takes out of one archive: the sizes of its files added up, and its members.
MAX_ARCHIVE_BYTES = 20 * 2**30
MAX_ARCHIVE_MEMBERS = 100_000


class ArchiveRefused(HarnessError, tarfile.TarError):
    """An archive over the harness's caps. A ``TarError`` too, so that a reader that takes an
    unreadable archive for a finding (the artifacts diff) takes this one the same way."""


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def capped_members(
    tar: tarfile.TarFile,
    archive: Path,
    *,
    max_bytes: int | None = None,
    max_members: int | None = None,
) -> Iterator[tarfile.TarInfo]:
    """The members of ``tar`` (opened from ``archive``) in order, each checked before it is
    yielded: :class:`ArchiveRefused` once the members exceed ``max_members`` or their sizes add
    up to more than ``max_bytes`` (default :data:`MAX_ARCHIVE_MEMBERS`, :data:`MAX_ARCHIVE_BYTES`).
    A member's size is in its header, so nothing of the member over the cap has been read or
    written when the error is raised."""
    max_bytes = MAX_ARCHIVE_BYTES if max_bytes is None else max_bytes
    max_members = MAX_ARCHIVE_MEMBERS if max_members is None else max_members
    total = 0
    hint = "an archive this large is refused as a gzip bomb would be; look at what the job wrote"
    for count, member in enumerate(tar, start=1):
        if count > max_members:
            raise ArchiveRefused(
                f"{archive} has more than {max_members} members; the harness opens at most {max_members}", hint=hint
            )
        total += member.size if member.isreg() else 0
        if total > max_bytes:
            raise ArchiveRefused(
                f"{archive} unpacks to more than {_size(max_bytes)} ({member.name!r} alone is "
                f"{_size(member.size)}); the harness extracts at most {_size(max_bytes)} from one archive",
                hint=hint,
            )
        yield member


def extract(archive: Path, dest: Path, *, max_bytes: int | None = None, max_members: int | None = None) -> list[str]:
    """Unpack ``archive`` into ``dest`` within the caps (:func:`capped_members`). Members tarfile's
    ``data`` filter refuses (a path or a link out of ``dest``, a device) are left out, not fatal:
    returns their names."""
    refused: list[str] = []

    def data_only(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        try:
            return tarfile.data_filter(member, path)
        except tarfile.FilterError:
            refused.append(member.name)
            return None

    with tarfile.open(archive) as tar:
        tar.extractall(
            dest, members=capped_members(tar, archive, max_bytes=max_bytes, max_members=max_members), filter=data_only
        )
    return refused


def collect(host_trees: dict[str, Path], record_root: Path) -> dict[str, Any]:
    """Merge per-host ``/opt/ml`` trees into the record's ``artifacts/``; return the summary."""
    summary: dict[str, Any] = {}
    artifacts = record_root / "artifacts"
    for subdir, archive in ARCHIVES.items():
        trees = {host: file_tree(root / subdir) for host, root in host_trees.items() if (root / subdir).is_dir()}
        writers: dict[str, list[str]] = {}
        for host, tree in trees.items():
            for name in tree:
                writers.setdefault(name, []).append(host)
        with tempfile.TemporaryDirectory(prefix="harness-merge-") as merged:
            for host in trees:
                shutil.copytree(host_trees[host] / subdir, merged, dirs_exist_ok=True, symlinks=True)
            pack_like_sagemaker(Path(merged), artifacts / archive)
            merged_tree = file_tree(Path(merged))
        summary[archive] = {
            "bytes": (artifacts / archive).stat().st_size,  # a damaged archive shows as another size
            "files": {name: {**entry, "hosts": writers.get(name, [])} for name, entry in merged_tree.items()},
            "per_host": trees,
            "clashes": {name: hosts for name, hosts in writers.items() if len(hosts) > 1},
        }
    write_json(artifacts / "summary.json", summary)
    return summary


def summarize_archives(record_root: Path) -> dict[str, Any]:
    """``artifacts/summary.json`` for archives that arrive merged (the ``sagemaker`` rung downloads
    what the service packed): which host wrote a file, and so any clash, cannot be known."""
    summary: dict[str, Any] = {}
    artifacts = record_root / "artifacts"
    for archive in ARCHIVES.values():
        if not (artifacts / archive).is_file():
            continue
        with tempfile.TemporaryDirectory(prefix="harness-unpack-") as unpacked:
            extract(artifacts / archive, Path(unpacked))
            files = file_tree(Path(unpacked))
        summary[archive] = {
            "bytes": (artifacts / archive).stat().st_size,
            "files": {name: {**entry, "hosts": []} for name, entry in files.items()},
            "per_host": "unknown: the service merges every host's files",
            "clashes": {},
        }
    write_json(artifacts / "summary.json", summary)
    return summary
