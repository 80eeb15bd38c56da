"""Install ``requirements.txt`` as a SageMaker launcher does before the entry point, then become
the launcher's command.

Standalone (standard library only, Python 3.8 and up): the ``docker`` rung runs it inside each
container, with the image's Python, as the container's entrypoint; the ``local`` rung runs it once
in the cached environment it builds (:mod:`harness.runtime.requirements`). Run it from the code directory::

    python3 -I install_requirements.py --launcher toolkit --result RESULT.json \\
        [--pip-env NAME=VALUE ...] [--drop-path DIR ...] [--announce LINE ...] [-- COMMAND ...]

It prints what the launcher prints (``--announce``), runs ``<this python> -m pip install -r
requirements.txt`` with pip's output on its own stdout and stderr, and writes ``RESULT.json``:
the command, pip's exit code and stderr, and the packages the install added or changed (name →
version, read with ``importlib.metadata`` before and after, first on ``sys.path`` wins, as an
import would). ``--pip-env`` variables are given to pip only (a wheelhouse: ``PIP_NO_INDEX``,
``PIP_FIND_LINKS``), never to the job; ``--drop-path`` removes a directory (the harness's probe)
from pip's ``PYTHONPATH``, and the probe's variables are dropped, so that pip is not recorded as
one of the job's processes. When pip fails it exits 1, as the launchers do; otherwise it
``exec``\\ s ``COMMAND`` in its place (same pid, same environment), or exits 0 without one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

REQUIREMENTS = "requirements.txt"
#: How much of pip's stderr the result keeps (the toolkit puts all of it in the failure message,
#: of which SageMaker keeps 1024 characters).
STDERR_KEPT = 8192
_PROBE_VARIABLES = ("HARNESS_PROBE_DIR", "HARNESS_HOST", "HARNESS_RUN_ID")


def installed() -> dict[str, str]:
    """Every distribution this Python sees: canonical name → (display name, version) flattened as
    ``{display name: version}``, the first one on ``sys.path`` for each name."""
    import importlib
    from importlib import metadata

    importlib.invalidate_caches()
    seen: dict[str, tuple[str, str]] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        key = re.sub(r"[-_.]+", "-", name).lower()
        seen.setdefault(key, (name, dist.version))
    return {name: version for name, version in sorted(seen.values(), key=lambda item: item[0].lower())}


def changes(before: dict[str, str], after: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(added or changed: name → new version, replaced: name → old version)."""
    old = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in before.items()}
    added, replaced = {}, {}
    for name, version in after.items():
        previous = old.get(re.sub(r"[-_.]+", "-", name).lower())
        if previous != version:
            added[name] = version
            if previous is not None:
                replaced[name] = previous
    return added, replaced


def pip_environment(pip_env: list[str], drop_paths: list[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _PROBE_VARIABLES}
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in drop_paths]
    if path:
        env["PYTHONPATH"] = os.pathsep.join(path)
    else:
        env.pop("PYTHONPATH", None)
    for item in pip_env:
        name, _, value = item.partition("=")
        env[name] = value
    return env


def run_pip(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run pip with its stdout where ours goes and its stderr both shown and kept."""
    sys.stdout.flush()
    proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kept = bytearray()
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.buffer.write(line)
        sys.stderr.flush()
        kept += line
        del kept[: max(0, len(kept) - STDERR_KEPT)]
    return proc.wait(), kept.decode("utf-8", "replace")


def write_result(path: str, result: dict[str, object]) -> None:
    partial = f"{path}.{os.getpid()}.tmp"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2, sort_keys=True)
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--result", required=True, help="where to write what was installed (JSON)")
    parser.add_argument("--pip-env", action="append", default=[], help="NAME=VALUE for pip only")
    parser.add_argument("--drop-path", action="append", default=[], help="a PYTHONPATH entry pip must not see")
    parser.add_argument("--announce", action="append", default=[], help="a line to print first ({python}: ours)")
    parser.add_argument("command", nargs="*", help="what to exec after a successful install")
    args = parser.parse_args(argv)
    for line in args.announce:
        print(line.replace("{python}", sys.executable), flush=True)
    command = [sys.executable, "-m", "pip", "install", "-r", REQUIREMENTS]
    before = installed()
    code, stderr = run_pip(command, pip_environment(args.pip_env, args.drop_path))
    added, replaced = changes(before, installed())
    write_result(
        args.result,
        {
            "command": command,
            "cwd": os.getcwd(),
            "exit_code": code,
            "python": sys.executable,
            "python_version": ".".join(str(part) for part in sys.version_info[:3]),
            "installed": added,
            "replaced": replaced,
            "stderr": stderr,
        },
    )
    if code != 0:
        return 1
    if args.command:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execvp(args.command[0], args.command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
