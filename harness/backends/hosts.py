"""What every rung the harness runs itself does for one SageMaker host: write its ``/opt/ml``
tree from the contract, record what it received, and collect what it left (exit code, failure
file, the ranks the probe saw)."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from harness.backends.base import copy_source
from harness.contract import PLATFORM_DIRS, HostContract, failure_message
from harness.jobspec import JobSpec
from harness.record import RecordWriter, log_text, redact_env, write_json

#: The probe, put first on every process's PYTHONPATH (mounted read-only in containers).
PROBE_DIR = Path(__file__).resolve().parent.parent / "probe"


def write_host_tree(job: JobSpec, contract: HostContract, tree: Path) -> None:
    """The host's ``/opt/ml``: the platform's directories and config files, and the job's code
    where the launcher expects it (channels are the rung's business: linked or mounted)."""
    for sub in PLATFORM_DIRS:
        (tree / sub).mkdir(parents=True, exist_ok=True)
    for relative, content in contract.files.items():
        (tree / relative).write_text(content, encoding="utf-8")
    copy_source(job, tree / PurePosixPath(contract.cwd).relative_to(contract.opt_ml))


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
    """Per global rank: the host and pid that ran it, from the probe's process records."""
    ranks: dict[str, object] = {}
    for path in sorted((record_root / "processes").glob("*.json")):
        info = json.loads(path.read_text())
        if info.get("rank") is not None:
            ranks[str(info["rank"])] = {
                key: info.get(key) for key in ("host", "pid", "local_rank", "ended_at", "exception")
            }
    return dict(sorted(ranks.items(), key=lambda item: int(item[0])))
