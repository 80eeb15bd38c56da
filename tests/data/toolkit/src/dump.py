"""Writes what the launcher gave this process, as JSON, for tests/test_toolkit.py: argv, the
interpreter's own command line, its parent's command line and environment (torchrun's, under
torchrun), cwd, the whole environment, sys.path, and the files each channel holds. Imports nothing
but the standard library (no torch)."""

import json
import os
import socket
import sys


def parent(name: str) -> list[str]:
    """The parent's ``/proc`` entry ``cmdline`` or ``environ``: as it was started."""
    with open(f"/proc/{os.getppid()}/{name}", "rb") as handle:
        return [field.decode() for field in handle.read().split(b"\0")[:-1]]


def main() -> None:
    channels = json.loads(os.environ.get("SM_CHANNELS", "[]"))
    dump = {
        "argv": sys.argv,
        "orig_argv": sys.orig_argv,
        "parent_argv": parent("cmdline"),
        "parent_env": dict(entry.split("=", 1) for entry in parent("environ")),
        "executable": sys.executable,
        "cwd": os.getcwd(),
        "hostname": socket.gethostname(),
        "env": dict(os.environ),
        "sys_path": sys.path,
        "channel_files": {
            name: sorted(os.listdir(os.environ[f"SM_CHANNEL_{name.upper()}"]))
            for name in channels
            if os.path.isdir(os.environ.get(f"SM_CHANNEL_{name.upper()}", ""))
        },
    }
    name = f"dump-{os.environ.get('SM_CURRENT_HOST', 'nohost')}-{os.environ.get('LOCAL_RANK', 'none')}.json"
    with open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], name), "w", encoding="utf-8") as handle:
        json.dump(dump, handle, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
