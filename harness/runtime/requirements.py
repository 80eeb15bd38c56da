"""``requirements.txt`` in ``source_dir``, installed before the entry point as SageMaker installs it.

The launchers inside a SageMaker container pip-install the code directory's ``requirements.txt``
on every host before they start the entry point, and fail the job if pip fails
(:func:`harness.spec.host_contract.requirements_command`). Each rung emulates it where its launcher runs:

* ``local`` (in the host launch, before any launcher starts): never in the user's environment.
  A virtual environment under ``~/.cache/harness/requirements/venv-<key>`` that sees the
  harness's own site-packages (torch is shared, not copied) gets the requirements once; the key
  is the SHA-256 of the file, the Python version, the harness environment's prefix and torch's
  version. It is built under a lock (concurrent runs wait for one build), marked complete only
  after pip succeeded, and reused; the hosts' launchers run with its ``bin`` first on ``PATH``
  and its ``python`` as the interpreter (console scripts such as ``torchrun`` are given there too).
* ``docker``: in each container at start, from a wheelhouse the host's pip made once
  (:func:`make_wheelhouse`: ``~/.cache/harness/requirements/wheels-<key>``, keyed by the file
  and the image's Python and platform): :mod:`harness.backends.container_installs`.
* ``sagemaker-local`` and ``sagemaker``: the SDK's own ``sm_train.sh`` installs, given
  ``SourceCode(requirements="requirements.txt")`` (:func:`sdk_requirements`), offline from the
  same wheelhouse on ``sagemaker-local``: :mod:`harness.backends.sdk_installs`.

This module holds what they share and the ``local`` family's environment.

Each host's ``received/requirements.json`` says what was installed (docs/run-record.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.record.run_record import RecordWriter, now, write_json
from harness.spec.host_contract import (
    REQUIREMENTS_EXIT_CODE,
    REQUIREMENTS_FILE,
    HostContract,
    Machine,
    requirements_announcement,
    requirements_command,
    requirements_failure_message,
)
from harness.spec.job import JobSpec

#: The installer, run in the cached environment (local) or as each container's entrypoint (docker).
SCRIPT = Path(__file__).with_name("install_requirements.py")
#: Bumped when what a cached environment or wheelhouse holds changes shape.
CACHE_FORMAT = "1"
DONE_MARK = "harness-install.json"  # written last: an environment without it is incomplete
_LOG = "harness-install.log"


class InstallFailed(HarnessError):
    """pip could not install the requirements (the job's failure, not the harness's). The rungs
    catch it and fail every host as the launcher would, the hint in the ``requirements`` rung
    fact. ``returncode`` is the failed command's exit status; ``exit_code`` stays the CLI's, as
    for every :class:`HarnessError`."""

    def __init__(self, returncode: int, stderr: str, output: str, stage: str, *, hint: str) -> None:
        super().__init__(f"pip exited {returncode} ({stage})", hint=hint)
        self.returncode, self.stderr, self.output, self.stage = returncode, stderr, output, stage


#: Where a failed install's output ends up, for the hints.
_SEE_LOG = "pip's output is in each host's log.txt of the record"


def requirements_file(job: JobSpec) -> Path | None:
    """``source_dir/requirements.txt`` of a script-mode job, if there is one."""
    if not job.is_script_mode or job.source_dir is None:
        return None
    path = job.source_dir / REQUIREMENTS_FILE
    return path if path.is_file() else None


def sdk_requirements(job: JobSpec) -> str | None:
    """``SourceCode.requirements`` for the SDK rungs: the file's name when it is there. SDK v3
    installs requirements only when asked (``sm_train.sh``); the toolkit always does: the harness
    asks, so that a job means the same on every rung."""
    return REQUIREMENTS_FILE if requirements_file(job) is not None else None


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/harness/requirements`` (``~/.cache`` by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "harness" / "requirements"


def _digest(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


def _torch_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "none"


def file_record(path: Path) -> dict[str, Any]:
    content = path.read_bytes()
    return {
        "file": REQUIREMENTS_FILE,
        "sha256": hashlib.sha256(content).hexdigest(),
        "text": content.decode("utf-8", "replace"),
    }


# --- local ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalEnvironment:
    """The cached environment of one ``requirements.txt`` for the harness's Python."""

    path: Path
    key: str

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def bin(self) -> Path:
        return self.path / "bin"


def local_environment(job: JobSpec) -> LocalEnvironment | None:
    """Where the job's requirements are (or will be) installed for the local rung; None without
    ``requirements.txt``. Nothing is built here (planning is a dry run)."""
    path = requirements_file(job)
    if path is None:
        return None
    key = _digest(CACHE_FORMAT, path.read_bytes(), sys.version, sys.prefix, _torch_version())
    return LocalEnvironment(cache_root() / f"venv-{key[:16]}", key)


def ensure_local_environment(job: JobSpec) -> None:
    """Build the job's cached environment now, where it has ``requirements.txt`` and none is
    built yet: the first run that builds it prints pip's output, the later ones one line that it
    was reused, so runs meant to be compared line by line start from a built one."""
    cached = local_environment(job)
    if cached is not None and job.source_dir is not None:
        _ensure_venv(cached, job.source_dir, [])


def local_machine(job: JobSpec, machine: Machine) -> Machine:
    """The local rung's machine with the cached environment's interpreter, where there is one."""
    env = local_environment(job)
    return machine if env is None else replace(machine, python=str(env.python))


def activate_local(job: JobSpec, env: dict[str, str]) -> None:
    """Put the cached environment's ``bin`` first on a host's ``PATH`` (``torchrun``, ``python``,
    ``pip`` there are the environment's)."""
    cached = local_environment(job)
    if cached is not None:
        env["PATH"] = os.pathsep.join((str(cached.bin), env.get("PATH", os.defpath)))


def plan_fact(job: JobSpec, facts: dict[str, Any]) -> None:
    """The ``requirements`` rung fact of a local plan: the cached environment the hosts run in."""
    if requirements_file(job) is None:
        return
    cached = local_environment(job)
    assert cached is not None
    facts["requirements"] = {
        "how": "installed once on this machine, before the hosts start, into a cached virtual environment "
        "that sees the harness's own site-packages (never into them); the launchers run with its bin "
        "first on PATH and its python as the interpreter; every host shares it",
        "environment": str(cached.path),
    }


def add_to_fact(record: RecordWriter, **values: Any) -> None:
    """Add ``values`` to the run's ``requirements`` fact, which a rung fills in phases (the plan,
    the wheelhouse, the install)."""
    record.set_fact("requirements", {**record.manifest.rung_facts.get("requirements", {}), **values})


def installed_summary(by_host: dict[str, Any]) -> Any:
    """What the hosts installed: one answer where every host installed the same, else per host."""
    values = list(by_host.values())
    return values[0] if all(value == values[0] for value in values) else by_host


def install_local(job: JobSpec, hosts: dict[str, HostContract], record: RecordWriter) -> bool:
    """Build or reuse the job's cached environment and record it for every host. False when pip
    failed: every host is then recorded as its launcher fails (exit 1, the failure message), and
    no launcher is started."""
    cached = local_environment(job)
    if cached is None:
        return True
    assert job.source_dir is not None
    started = now()
    command = requirements_command(job, Machine(num_cpus=1, python=str(cached.python)))
    announce = requirements_announcement(job, command)
    info: dict[str, Any] = {
        **file_record(job.source_dir / REQUIREMENTS_FILE),
        "launcher": job.launcher,
        "emulated": "in the host launch, once for all hosts, in a cached environment",
        "environment": str(cached.path),
        "cache_key": cached.key,
    }
    try:
        result, reused, output = _ensure_venv(cached, job.source_dir, announce)
    except InstallFailed as failed:
        info.update(command=command, exit_code=failed.returncode, stderr=failed.stderr, stage=failed.stage)
        fail_hosts(job, hosts, record, info, failed, command, started)
        return False
    info.update(result, reused=reused, built_at=result.get("built_at"))
    lines = (
        output.splitlines()
        if not reused
        else [
            *announce,
            f"[harness] {REQUIREMENTS_FILE} is installed in the cached environment {cached.path} "
            f"(built {result.get('built_at')}); pip was not run again",
        ]
    )
    for host in hosts:
        _append_log(record, host, lines)
        write_json(record.host_dir(host) / "received" / "requirements.json", info)
    add_to_fact(record, installed=result.get("installed", {}))
    return True


def _ensure_venv(cached: LocalEnvironment, source_dir: Path, announce: list[str]) -> tuple[dict[str, Any], bool, str]:
    """(the install's result, whether it was reused, pip's output). Under an exclusive lock, so
    that concurrent runs build it once; an environment is complete only once ``DONE_MARK`` exists."""
    cached.path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(cached.path.parent / f"{cached.path.name}.lock"):
        done = cached.path / DONE_MARK
        if done.is_file():
            log = cached.path / _LOG
            return json.loads(done.read_text()), True, log.read_text(errors="replace") if log.is_file() else ""
        shutil.rmtree(cached.path, ignore_errors=True)  # an interrupted build
        try:
            return _build_venv(cached, source_dir, announce), False, (cached.path / _LOG).read_text(errors="replace")
        except BaseException:
            shutil.rmtree(cached.path, ignore_errors=True)
            raise


def _build_venv(cached: LocalEnvironment, source_dir: Path, announce: list[str]) -> dict[str, Any]:
    venv = subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(cached.path)], capture_output=True, text=True
    )
    if venv.returncode != 0:
        raise InstallFailed(
            venv.returncode,
            venv.stderr,
            venv.stdout + venv.stderr,
            "python -m venv",
            hint=f"the harness's Python could not make a virtual environment under {cached.path.parent}: "
            "check that it is writable and has free space (the error is in each host's log.txt)",
        )
    purelib = subprocess.run(
        [str(cached.python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The harness's own site-packages after the environment's own: what the job saw without
    # requirements, with what pip adds in front (pip never uninstalls outside the environment).
    shared = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib) / "_harness_shared_site.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({p!r})" for p in shared) + "\n", encoding="utf-8"
    )
    _console_scripts(cached)
    result_path = cached.path / f"{DONE_MARK}.partial"
    argv = [
        str(cached.python),
        "-I",
        str(SCRIPT),
        "--result",
        str(result_path),
        *(arg for line in announce for arg in ("--announce", line)),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARNESS_")}
    with (cached.path / _LOG).open("w", encoding="utf-8") as log:
        proc = subprocess.run(
            argv, cwd=source_dir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    output = (cached.path / _LOG).read_text(errors="replace")
    if not result_path.is_file():
        raise InstallFailed(
            proc.returncode,
            output[-4096:],
            output,
            "the installer",
            hint=f"the installer stopped before it wrote its result; {_SEE_LOG}",
        )
    result: dict[str, Any] = json.loads(result_path.read_text())
    if result["exit_code"] != 0:
        raise InstallFailed(
            result["exit_code"],
            result["stderr"],
            output,
            "pip install",
            hint=f"fix {REQUIREMENTS_FILE} in source_dir (a package or version pip cannot find or build); {_SEE_LOG}",
        )
    result.update(built_at=now(), shares=shared)
    (cached.path / DONE_MARK).write_text(json.dumps(result, indent=2), encoding="utf-8")
    result_path.unlink()
    return result


def _console_scripts(cached: LocalEnvironment) -> None:
    """The harness environment's console scripts (``torchrun``, ...) in the cached environment's
    ``bin``, run by its python: a launcher found on ``PATH`` then starts the job's processes with
    the interpreter that sees the requirements."""
    ours = os.path.realpath(sys.executable)  # python, python3, python3.11 of the harness's environment
    for script in Path(sys.executable).parent.iterdir():
        target = cached.bin / script.name
        if target.exists() or script.is_symlink() or not script.is_file():
            continue
        with contextlib.suppress(OSError, UnicodeDecodeError):
            with script.open("rb") as handle:
                first = handle.readline(4096)
            if not first.startswith(b"#!") or os.path.realpath(first[2:].decode().split()[0]) != ours:
                continue
            target.write_bytes(b"#!" + str(cached.python).encode() + b"\n" + script.read_bytes().split(b"\n", 1)[1])
            target.chmod(0o755)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _append_log(record: RecordWriter, host: str, lines: list[str]) -> None:
    """Lines in the host's log, before its launcher's, in the record's format."""
    with (record.host_dir(host) / "log.txt").open("a", encoding="utf-8") as log:
        for line in lines:
            log.write(f"{now()} {line}\n")


def fail_hosts(
    job: JobSpec,
    hosts: dict[str, HostContract] | list[str],
    record: RecordWriter,
    info: dict[str, Any],
    failed: InstallFailed,
    command: list[str],
    started: str,
) -> None:
    """Every host as its launcher leaves it when pip fails: pip's output in its log, exit 1, the
    launcher's failure message (``failure_written_by: launcher``)."""
    message = requirements_failure_message(job, failed.returncode, command, failed.stderr)
    for host in hosts:
        _append_log(record, host, failed.output.splitlines())
        write_json(record.host_dir(host) / "received" / "requirements.json", info)
        (record.host_dir(host) / "failure").write_text(message)
        record.host_result(
            host,
            exit_code=REQUIREMENTS_EXIT_CODE,
            started_at=started,
            ended_at=now(),
            failure_reason=message[:1024],
            failure_written_by="launcher",
        )
    add_to_fact(record, failed=failed.message, hint=failed.hint)


def image_python(client: Any, image: str, labels: dict[str, str]) -> dict[str, Any]:
    """The image's ``python3``: version, wheel tag, platform, C library and the distributions it
    has (``installed``: ``name==version``), asked once per image id and kept in the cache. Raises
    :class:`InstallFailed` when the image has no ``python3``."""
    image_id = str(client.images.get(image).id).replace("sha256:", "")
    known = cache_root() / "images" / f"{image_id[:32]}.json"
    if known.is_file():
        cached = dict(json.loads(known.read_text()))
        if "installed" in cached:
            return cached
    code = (
        "import json, platform, sys, sysconfig, importlib.metadata as m; print(json.dumps({"
        "'version': platform.python_version(), 'tag': 'cp%d%d' % sys.version_info[:2], "
        "'platform': sysconfig.get_platform(), 'libc': '-'.join(platform.libc_ver()), "
        "'installed': sorted({'%s==%s' % (d.metadata['Name'], d.version) for d in m.distributions() "
        "if d.metadata['Name']})}))"
    )
    from docker.errors import APIError, ContainerError

    from harness.runtime.images import python_json_in_image

    try:
        found: dict[str, Any] = python_json_in_image(client, image, code, labels)
    except (ContainerError, APIError) as exc:  # no python3: the launcher could not run pip either
        message = f"the image {image} has no working python3 to install requirements.txt with: {exc}"
        raise InstallFailed(
            127,
            message,
            message,
            "asking the image's python3",
            hint=f"use an image with python3 on its PATH, or leave {REQUIREMENTS_FILE} out of source_dir "
            "(SageMaker's launcher could not install it in this image either)",
        ) from exc
    known.parent.mkdir(parents=True, exist_ok=True)
    known.write_text(json.dumps(found), encoding="utf-8")
    return found


def _host_python() -> dict[str, str]:
    import sysconfig

    return {"tag": f"cp{sys.version_info[0]}{sys.version_info[1]}", "platform": sysconfig.get_platform()}


def make_wheelhouse(requirements: Path, target: dict[str, Any]) -> tuple[Path, bool]:
    """Wheels of everything ``requirements`` needs for ``target`` (the image's Python), made by
    the host's pip with the host's index and certificates; (the folder, whether it was reused).

    Where the image's Python is the harness's (same ``cpXY`` tag and platform), ``pip wheel``:
    wheels as published, and wheels built here from any source-only package, so the container
    installs with no compiler and no network. Otherwise ``pip download --only-binary=:all:`` for
    the image's tag and platform (a source-only package then fails, saying so).

    What the image has is kept: its distributions constrain the resolution (a requirement on
    ``torch`` takes the image's build, never the newest wheel with its CUDA libraries), and their
    wheels are left out of the folder, so the container's pip finds them satisfied. Where the
    requirements conflict with the image (they pin another version), pip resolves them alone, as
    it would in the container, and the image's package is upgraded there."""
    host = _host_python()
    native = host["tag"] == target["tag"] and host["platform"] == target["platform"]
    key = _digest(
        CACHE_FORMAT,
        requirements.read_bytes(),
        target["tag"],
        target["platform"],
        target.get("libc", ""),
        "wheel" if native else "download",
        *target.get("installed", []),
    )
    folder = cache_root() / f"wheels-{key[:16]}"
    if (folder / DONE_MARK).is_file():
        return folder, True
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    pip = [sys.executable, "-m", "pip"]
    if native:
        argv = [*pip, "wheel", "-r", REQUIREMENTS_FILE, "--wheel-dir", str(partial)]
    else:
        version = target["tag"].removeprefix("cp")
        arch = target["platform"].rpartition("-")[2]
        argv = [
            *pip,
            "download",
            "-r",
            REQUIREMENTS_FILE,
            "--dest",
            str(partial),
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            f"{version[0]}.{version[1:]}",
            "--abi",
            target["tag"],
            "--abi",
            "abi3",
            "--abi",
            "none",
            *(arg for tag in _platform_tags(target, arch) for arg in ("--platform", tag)),
        ]
    try:
        installed = _constraints(target.get("installed", []))
        out = None
        if installed:
            constraints = partial / ".image-constraints.txt"
            constraints.write_text("\n".join(installed) + "\n", encoding="utf-8")
            out = subprocess.run(
                [*argv, "-c", str(constraints)], cwd=requirements.parent, capture_output=True, text=True
            )
            constraints.unlink()
        if out is None or out.returncode != 0:  # no image list, or requirements that pin another version
            out = subprocess.run(argv, cwd=requirements.parent, capture_output=True, text=True)
        if out.returncode != 0:
            raise InstallFailed(
                out.returncode,
                out.stderr,
                out.stdout + out.stderr,
                f"the host's pip {argv[3]} making the wheelhouse",
                hint=f"fix {REQUIREMENTS_FILE} in source_dir (a package or version pip cannot find or build)"
                + (
                    ""
                    if native
                    else f"; only wheels for the image's Python ({target['tag']}, {target['platform']}) can be "
                    "used, so a package without one needs an image with the harness's Python (pip then builds it)"
                )
                + f"; {_SEE_LOG}",
            )
        kept = _drop_installed(partial, installed)
        (partial / DONE_MARK).write_text(
            json.dumps(
                {"argv": argv, "target": short_target(target), "left_to_the_image": kept, "made_at": now()}, indent=2
            )
        )
        try:
            partial.rename(folder)
        except OSError:  # another run made it first: use that one
            if not (folder / DONE_MARK).is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder, False


#: Never constrained: the installers themselves (pip builds packages with newer ones, and an
#: image may carry two of them, its system's and pip's own).
_INSTALLERS = {"pip", "setuptools", "wheel"}


def _constraints(installed: list[str]) -> list[str]:
    """The image's distributions as pins, but for the installers and names it has twice."""
    names = [_canonical(pin.partition("==")[0]) for pin in installed]
    return [
        pin for pin, name in zip(installed, names, strict=True) if name not in _INSTALLERS and names.count(name) == 1
    ]


def _drop_installed(folder: Path, installed: list[str]) -> list[str]:
    """Remove the wheels of distributions the image has at that version; returns their names."""
    have = {_canonical(pin.partition("==")[0]): pin.partition("==")[2] for pin in installed}
    dropped = []
    for wheel in folder.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        if have.get(_canonical(name)) == version:
            wheel.unlink()
            dropped.append(f"{name}=={version}")
    return sorted(dropped)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def short_target(target: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in target.items() if key != "installed"}


def _platform_tags(target: dict[str, Any], arch: str) -> list[str]:
    """Wheel platform tags the image accepts: manylinux up to its glibc, plain linux."""
    libc, _, version = target.get("libc", "").partition("-")
    tags = [f"linux_{arch}"]
    if libc == "glibc" and version.count(".") >= 1:
        minor = int(version.split(".")[1])
        tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, 16, -1)] + [f"manylinux2014_{arch}", *tags]
    return tags
