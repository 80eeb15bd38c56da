"""What tests/data/toolkit/src/dump.py wrote in each process of a run, read back from the run's
``output.tar.gz``: the conformance tests of the toolkit (tests/test_toolkit.py) and of the SDK v3
drivers (tests/test_model_trainer_conformance.py) compare these with the emulation."""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

from harness.record.run_record import RunRecord


def process_dumps(record: RunRecord) -> dict[tuple[str, str], dict[str, Any]]:
    """Each process's dump, by host and local rank (``none`` outside torchrun)."""
    found = {}
    with tarfile.open(record.root / "artifacts" / "output.tar.gz") as tar:
        for member in tar.getmembers():
            handle = tar.extractfile(member)
            if member.name.startswith("dump-") and handle is not None:
                host, rank = member.name.removeprefix("dump-").removesuffix(".json").rsplit("-", 1)
                found[(host, rank)] = json.load(io.TextIOWrapper(handle, encoding="utf-8"))
    return found
