"""The harness probe, imported by every Python process a rung starts (through PYTHONPATH).

It must never change what the job computes, and it runs where the harness is not installed
(inside containers), so it is one standalone file using only the standard library. It records
what each process really received and tees each rank's output into its own timestamped log.
Everything is written under ``HARNESS_PROBE_DIR``; without that variable the probe does nothing.
"""

import atexit
import datetime
import importlib.machinery
import importlib.util
import json
import os
import re
import subprocess
import sys

_DIR = os.environ.get("HARNESS_PROBE_DIR")
_HERE = os.path.dirname(os.path.abspath(__file__))
_SECRET = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|_KEY$|^AWS_ACCESS_KEY_ID$", re.I)
# Runs in a child process started with -S, so it never loads this probe again. It outlives a
# crashing rank and so keeps the traceback its rank printed last.
_TEE = r"""
import datetime, sys
out = open(sys.argv[1], "ab", buffering=0)
passthrough = sys.stdout.buffer
for line in sys.stdin.buffer:
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
    out.write(stamp.replace("+00:00", "Z").encode() + b" " + line)
    passthrough.write(line)
    passthrough.flush()
"""


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
    os.replace(tmp, path)


def _record_process():
    """What this process received: argv, working dir, environment (secrets redacted)."""
    env = {k: ("<redacted>" if _SECRET.search(k) else v) for k, v in os.environ.items()}
    info = {
        "pid": os.getpid(), "ppid": os.getppid(), "host": os.environ.get("HARNESS_HOST"),
        "rank": os.environ.get("RANK"), "local_rank": os.environ.get("LOCAL_RANK"),
        "argv": [sys.executable, *sys.argv] if sys.argv and sys.argv[0] else [sys.executable],
        "orig_argv": list(getattr(sys, "orig_argv", [])), "cwd": os.getcwd(),
        "started_at": _now(), "env": env,
    }
    directory = os.path.join(_DIR, "processes")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "%s-%d.json" % (info["host"] or "host", os.getpid()))
    _write_json(path, info)
    atexit.register(lambda: _write_json(path, {**info, "ended_at": _now()}))


def _tee_rank_output(rank):
    """Route this rank's stdout and stderr through a timestamping tee into ranks/rank-N.log."""
    directory = os.path.join(_DIR, "ranks")
    os.makedirs(directory, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    tee = subprocess.Popen([sys.executable, "-S", "-c", _TEE, os.path.join(directory, "rank-%s.log" % rank)],
                           stdin=subprocess.PIPE, close_fds=True)
    os.dup2(tee.stdin.fileno(), 1)
    os.dup2(tee.stdin.fileno(), 2)
    tee.stdin.close()


def _guard_opt_ml():
    """Where the rung cannot give this process its own /opt/ml, any use of the machine's real one
    fails at once with the reason, instead of reading stale files or writing outside the run."""
    events = {"open", "os.mkdir", "os.rename", "os.listdir", "os.scandir", "os.remove", "shutil.copyfile"}

    def audit(event, args):
        if event in events and args and str(args[0]).startswith("/opt/ml"):
            raise PermissionError(
                "harness: this rung does not emulate /opt/ml (no private namespaces here), so %s on %s "
                "was refused. Read paths from SM_MODEL_DIR, SM_CHANNEL_<NAME>, SM_INPUT_CONFIG_DIR, or run "
                "the harness as root" % (event, args[0]))
    sys.addaudithook(audit)


def _chain_next_sitecustomize():
    """Keep the sitecustomize this probe shadows (Debian's, a team's) working."""
    others = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


if _DIR:
    _record_process()
    if os.environ.get("RANK") is not None:
        _tee_rank_output(os.environ["RANK"])
    if os.environ.get("HARNESS_GUARD_OPT_ML"):
        _guard_opt_ml()
_chain_next_sitecustomize()
