"""Artifacts as SageMaker leaves them: every host's ``/opt/ml/model`` and ``output/data`` merged
into one ``model.tar.gz`` and ``output.tar.gz``.

The service aggregates the directories of all hosts into one archive and leaves name clashes to
the user (AWS developer guide, "Output" and "Storage tips" pages); local mode copies host after
host, so a later host overwrites an earlier one. The harness merges the same way and records
every clash with the hosts involved, since a clash is a likely cause of a divergent model.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from harness.record import file_tree, pack_like_sagemaker, write_json

#: Directory under ``/opt/ml`` → archive name, as the service uploads them.
ARCHIVES = {"model": "model.tar.gz", "output/data": "output.tar.gz"}


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
        with tempfile.TemporaryDirectory(prefix="harness-unpack-") as unpacked, \
                tarfile.open(artifacts / archive) as tar:
            tar.extractall(unpacked, filter="data")
            files = file_tree(Path(unpacked))
        summary[archive] = {"bytes": (artifacts / archive).stat().st_size,
                            "files": {name: {**entry, "hosts": []} for name, entry in files.items()},
                            "per_host": "unknown: the service merges every host's files", "clashes": {}}
    write_json(artifacts / "summary.json", summary)
    return summary
