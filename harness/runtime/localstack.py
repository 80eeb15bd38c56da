"""LocalStack on this machine: S3 and CloudWatch Logs without an AWS account.

``harness localstack up`` installs LocalStack's runtime into a virtual environment of its own
(the runtime needs Python >= 3.13; the harness runs on 3.11 and up, and LocalStack's pins would
fight the SDK's), starts it in the background on loopback and waits until S3 answers.
``harness localstack env`` prints the standard variables that point boto3, the SageMaker SDK
and therefore every rung at it; ``down`` stops it. There is no container: no registry is needed.

The state (virtual environment, pid file, log, LocalStack's own files) lives under
``$XDG_CACHE_HOME/harness/localstack``; nothing is persisted between starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

#: What LocalStack's runtime needs on the host, as verified here: its own pins leave
#: ``cryptography``, ``pyopenssl`` and ``cbor2`` open, and the newest of each break the S3 server
#: (``cbor2._decoder`` is gone in cbor2 6) or its TLS setup.
REQUIREMENTS = (
    "localstack-core[runtime]==2026.3.0",
    "cryptography<44",
    "pyopenssl==24.2.1",
    "service_identity",
    "cbor2<6",
)
SERVICES = "s3,logs,sts,iam"  # sts and iam: the SageMaker SDK asks them who it is
DEFAULT_PORT = 4566
#: LocalStack accepts any credentials; these are its documented test values.
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
DEFAULT_REGION = "us-east-1"
START_TIMEOUT_S = 90


class LocalStackError(HarnessError):
    """LocalStack could not be installed, started or reached."""


def home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "harness" / "localstack"


@dataclass(frozen=True)
class Running:
    """A LocalStack the harness started: its process group and its endpoint."""

    pid: int
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The variables boto3 (>= 1.28) and the SageMaker SDK read: every client they make talks
        to this LocalStack. ``AWS_ENDPOINT_URL_SAGEMAKER`` is left alone: LocalStack's community
        edition has no SageMaker API."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": self.endpoint,  # boto3 names it by service id
            "AWS_ENDPOINT_URL_STS": self.endpoint,
            "AWS_ENDPOINT_URL_IAM": self.endpoint,
            **TEST_CREDENTIALS,
            "AWS_REGION": DEFAULT_REGION,
            "AWS_DEFAULT_REGION": DEFAULT_REGION,
        }


def find_python() -> str:
    """A Python >= 3.13 for LocalStack: ``$HARNESS_LOCALSTACK_PYTHON``, then ``python3.13`` and up
    on ``PATH``, then pyenv's versions."""
    candidates = [os.environ.get("HARNESS_LOCALSTACK_PYTHON", "")]
    candidates += [shutil.which(f"python3.{minor}") or "" for minor in range(20, 12, -1)]
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    candidates += [str(p / "bin" / "python3") for p in sorted(pyenv.glob("3.1[3-9]*"), reverse=True)]
    for candidate in filter(None, candidates):
        if _version(candidate) >= (3, 13):
            return candidate
    raise LocalStackError(
        "LocalStack needs Python 3.13 or newer and none was found",
        hint="install one (pyenv install 3.13, or your distribution's python3.13) or set HARNESS_LOCALSTACK_PYTHON",
    )


def _version(python: str) -> tuple[int, int]:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        major, minor = out.stdout.split()
        return int(major), int(minor)
    except (OSError, subprocess.SubprocessError, ValueError):
        return (0, 0)


def install(python: str | None = None) -> Path:
    """The runtime's virtual environment, made (or remade when :data:`REQUIREMENTS` changed)."""
    venv = home() / "venv"
    stamp = venv / "harness-requirements.sha256"
    wanted = hashlib.sha256("\n".join(REQUIREMENTS).encode()).hexdigest()
    if stamp.is_file() and stamp.read_text().strip() == wanted:
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    interpreter = python or find_python()
    steps = (
        [interpreter, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *REQUIREMENTS],
    )
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            lines = [line for line in done.stderr.splitlines() if "is ignored" not in line]
            raise LocalStackError(
                f"installing LocalStack failed ({' '.join(step[:4])} ...): " + " | ".join(lines[-3:]),
                hint="check that PyPI is reachable; the command above shows what failed",
            )
    stamp.write_text(wanted)
    return venv


def current() -> Running | None:
    """The LocalStack the harness started and that still answers, or None."""
    state = home() / "state.json"
    try:
        info = json.loads(state.read_text())
        running = Running(int(info["pid"]), int(info["port"]))
        os.kill(running.pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return running if _healthy(running.endpoint) else None


def _healthy(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/_localstack/health", timeout=2) as response:
            services = json.load(response).get("services", {})
    except (OSError, ValueError, urllib.error.URLError):
        return False
    return all(services.get(name) in ("available", "running") for name in SERVICES.split(","))


def up(port: int = DEFAULT_PORT, *, python: str | None = None) -> Running:
    """Start LocalStack on ``127.0.0.1:port`` unless the harness's is already up; wait for S3."""
    running = current()
    if running is not None:
        return running
    venv = install(python)
    root = home()
    log = root / "localstack.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LOCALSTACK_"))},
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "SERVICES": SERVICES,
        "OVERRIDE_IN_DOCKER": "0",  # host mode, also where the harness itself runs in a container
        "FILESYSTEM_ROOT": str(root / "filesystem"),
        "DNS_ADDRESS": "0",  # no DNS server: it would want port 53 and an upstream resolver
        "SKIP_SSL_CERT_DOWNLOAD": "1",
        "DISABLE_EVENTS": "1",  # no analytics calls out
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(venv / "bin" / "python"), "-m", "localstack.runtime.main"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    running = Running(process.pid, port)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _healthy(running.endpoint):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop_group(process.pid)
            tail = log.read_text(errors="replace").splitlines()[-3:]
            why = "it exited" if process.returncode is not None else f"it did not answer within {START_TIMEOUT_S} s"
            raise LocalStackError(
                f"LocalStack did not start on port {port}: {why}: " + " | ".join(tail),
                hint=f"the whole log is {log}; is the port taken?",
            )
        time.sleep(0.5)
    (root / "state.json").write_text(json.dumps({"pid": running.pid, "port": port}))
    return running


def down() -> bool:
    """Stop the harness's LocalStack (its whole process group); False when none was running."""
    state = home() / "state.json"
    try:
        pid = int(json.loads(state.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    stopped = _stop_group(pid)
    state.unlink(missing_ok=True)
    shutil.rmtree(home() / "filesystem", ignore_errors=True)
    return stopped


def _stop_group(pid: int, grace_s: float = 10) -> bool:
    """SIGTERM to the process group (LocalStack shuts down cleanly on it), SIGKILL after ``grace_s``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return True


def shell_exports(running: Running) -> str:
    """``export K=V`` lines for ``eval "$(harness localstack env)"``."""
    return "\n".join(f"export {key}={value}" for key, value in running.env().items())
