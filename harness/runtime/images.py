"""Container images for the docker and sagemaker-local rungs, built without a registry.

Where no registry answers, ``FROM python:3.11-slim`` cannot be pulled, so the base image is made
from Debian packages (:func:`bootstrap_base_image`) and Python packages come from a wheelhouse
downloaded on the host (:func:`build_wheelhouse`) and installed offline (:func:`build_image`).
A team with a registry skips the first step and passes its own base, e.g. ``python:3.11-slim``.

Every image is tagged by a hash of what went into it: asking again for the same image finds the
first one and returns at once, and a changed input can never be served a stale image. Every
image carries the label ``harness.managed=true``, so leftovers can be found and removed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from docker import DockerClient
from docker.errors import APIError, BuildError, ImageNotFound
from docker.utils import parse_repository_tag

from harness.errors import ImageError

__all__ = [
    "bootstrap_base_image",
    "build_image",
    "build_toolkit_wheelhouse",
    "build_wheelhouse",
    "ensure_toolkit_image",
    "ensure_torch_image",
]

log = logging.getLogger(__name__)


def python_json_in_image(client: DockerClient, image: str, code: str, labels: dict[str, str]) -> Any:
    """What ``code``, run by the image's ``python3`` in isolated mode with no network, prints
    last, read as JSON: how the harness asks an image what it has. The engine's errors
    (``ContainerError``: no ``python3``, ``APIError``) and the output's (``ValueError``,
    ``IndexError``) are the caller's to judge."""
    out = client.containers.run(
        image, entrypoint=["python3", "-I", "-c", code], network_mode="none", labels=labels, remove=True
    )
    return json.loads(bytes(out).decode().strip().splitlines()[-1])


_LABEL = "harness.managed=true"
_TORCH_REQUIREMENTS = ("torch==2.13.0", "numpy")
#: The SageMaker training toolkit as the PyTorch deep learning containers install it (their
#: Dockerfile.cpu/gpu: ``pip install sagemaker-pytorch-training sagemaker-training``), pinned.
TOOLKIT_VERSIONS = {"sagemaker-training": "5.1.4", "sagemaker-pytorch-training": "3.0.0"}
#: The label a toolkit image carries: the versions, as the rung's ``toolkit`` fact says them.
TOOLKIT_LABEL = "harness.toolkit"
#: The toolkit image's repository; ``--image harness/toolkit`` asks the docker rung to build it.
TOOLKIT_IMAGE = "harness/toolkit"
#: What the PyTorch DLCs set so that ``train`` (sagemaker_training.cli.train) hands over to the
#: PyTorch toolkit (``ENV SAGEMAKER_TRAINING_MODULE=...`` in every pytorch/training Dockerfile).
TOOLKIT_MODULE = "sagemaker_pytorch_container.training:main"
#: Debian bookworm's python3, which the base image has: the toolkit's C extension is built for it.
_IMAGE_PYTHON = "3.11"

_DEBIAN_MIRROR = "http://deb.debian.org/debian"
# SageMaker's training driver runs `python3 || python` and `pip3 || pip`; other launchers call
# `python`, which python-is-python3 provides.
_BASE_PACKAGES = ("python3", "python3-pip", "python3-venv", "python-is-python3", "ca-certificates")
# Debian marks its Python "externally managed" (PEP 668), so `pip install` outside a venv fails.
# python:* and SageMaker images allow it. Deleting the marker, rather than setting
# PIP_BREAK_SYSTEM_PACKAGES, keeps the job's environment free of a variable those images lack.
_BASE_REMOVED = ("usr/lib/python3*/EXTERNALLY-MANAGED",)
# An imported rootfs has no image config: give it what python:* images set.
_BASE_CHANGES = (
    f"LABEL {_LABEL}",
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)
_DOCKERFILE = ".harness.Dockerfile"  # names in the build context that a user's files won't have
_WHEELS = ".harness-wheels"


def bootstrap_base_image(client: DockerClient, *, suite: str = "bookworm", tag: str | None = None) -> str:
    """Make a Debian ``suite`` image with python3, pip and venv; return its tag.

    The default tag hashes the recipe (suite, mirror, packages, fixes): an unchanged recipe
    reuses the image, a changed one makes another. Needs root, debootstrap and the Debian
    mirror; about a minute.
    """
    recipe = (suite, _DEBIAN_MIRROR, *_BASE_PACKAGES, *_BASE_REMOVED, *_BASE_CHANGES)
    tag = tag or f"harness/base:{suite}-{_digest(*recipe)}"
    if client.images.list(name=tag):
        return tag
    if shutil.which("debootstrap") is None:
        raise ImageError(
            f"cannot make base image {tag}: debootstrap is not installed",
            hint="apt-get install debootstrap, or pass an existing base image to build_image()",
        )
    started = time.monotonic()
    with _scratch_dir("harness-rootfs-") as scratch:
        rootfs, archive = scratch / "rootfs", scratch / "rootfs.tar"
        _debootstrap(suite, rootfs)
        for path in (p for pattern in _BASE_REMOVED for p in rootfs.glob(pattern)):
            path.unlink()
        tar = ["tar", "-C", str(rootfs), "-cf", str(archive), "."]
        _run(tar, what="packing the rootfs", hint="check the free space in $TMPDIR")
        repository, version = parse_repository_tag(tag)
        try:  # the daemon can report a failed import in an HTTP 200 body: look for the image
            client.api.import_image_from_file(
                str(archive), repository=repository, tag=version, changes=list(_BASE_CHANGES)
            )
            client.images.get(tag)
        except APIError as exc:
            raise ImageError(
                f"docker could not import the {suite} rootfs as {tag}: {exc}",
                hint="see the dockerd log",
            ) from exc
    log.info("bootstrapped %s in %.0f s", tag, time.monotonic() - started)
    return tag


def build_wheelhouse(packages: Sequence[str], dest: Path, python_version: str = "3.11") -> Path:
    """Download wheels of ``packages`` and their dependencies; return the folder they are in.

    The host's pip runs, with the host's configuration (index, find-links, certificates), so
    the image can install them with no network. The folder under ``dest`` is keyed by
    ``python_version`` and the requirements, and reused. Wheels only: an image may lack a compiler.
    """
    target = dest / f"py{python_version}-{_digest(python_version, *sorted(packages))}"
    if target.is_dir():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=dest))
    pip = [sys.executable, "-m", "pip", "download", "--only-binary=:all:"]
    try:
        _run(
            [*pip, "--python-version", python_version, "--dest", str(partial), *packages],
            what=f"pip download {' '.join(packages)}",
            hint=f"pip needs an index or find-links with wheels for CPython {python_version}",
        )
        partial.rename(target)  # only a complete download gets the name that is reused
    except OSError:
        if not target.is_dir():  # another process renamed its download first: use that one
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log.info("downloaded wheelhouse %s in %.0f s", target, time.monotonic() - started)
    return target


def build_image(
    client: DockerClient,
    *,
    base: str,
    steps: Sequence[str] = (),
    context: Path | None = None,
    wheelhouse: Path | None = None,
    name: str = "harness/image",
) -> str:
    """Build ``steps`` (Dockerfile lines) on ``base``, wheels first; return the image's tag.

    ``context`` is a folder whose files the steps can ``COPY``. The tag is ``name:<hash>`` of the
    Dockerfile, the context files, the wheel names and the base image's id, so a rebuilt base
    gives a new image. The wheels are installed by the base's own ``python3 -m pip``, so any
    base with python3 and pip works; their files stay in a lower layer (the engine's legacy
    builder has no build mounts), which costs disk but nothing else for images never pushed.
    """
    base_id = _image_id(client, base)
    dockerfile = _dockerfile(base, steps, with_wheels=wheelhouse is not None)
    inputs = [base_id, dockerfile, *_tree_digests(context), *_wheel_names(wheelhouse)]
    tag = f"{name}:{_digest(*inputs)}"
    if client.images.list(name=tag):
        return tag
    started = time.monotonic()
    with tempfile.TemporaryFile() as archive:
        _write_context(archive, dockerfile, context, wheelhouse)
        archive.seek(0)
        try:
            client.images.build(fileobj=archive, custom_context=True, dockerfile=_DOCKERFILE, tag=tag, forcerm=True)
        except BuildError as exc:
            output = "".join(str(chunk.get("stream", "")) for chunk in exc.build_log)
            raise ImageError(
                f"building {tag} on {base} failed: {exc.msg}\n{output[-3000:]}",
                hint="the step that failed is at the end of the build output above",
            ) from exc
        except APIError as exc:
            raise ImageError(f"docker refused to build {tag}: {exc}", hint="see the dockerd log") from exc
    log.info("built %s in %.0f s", tag, time.monotonic() - started)
    return tag


def ensure_torch_image(client: DockerClient) -> str:
    """Return the tag of the image tests and CI run torch jobs in: python3, pip, torch, numpy.

    Builds what is missing: the first call takes a couple of minutes, later ones under a second.
    The wheels are kept under ``$XDG_CACHE_HOME/harness/wheels`` (``~/.cache`` by default).
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "harness" / "wheels"
    base = bootstrap_base_image(client)
    wheels = build_wheelhouse(_TORCH_REQUIREMENTS, cache)
    return build_image(client, base=base, wheelhouse=wheels, name="harness/torch")


def toolkit_description(versions: dict[str, str] | None = None) -> str:
    """``sagemaker-training 5.1.4, sagemaker-pytorch-training 3.0.0``: the label's value."""
    return ", ".join(f"{name} {version}" for name, version in (versions or TOOLKIT_VERSIONS).items())


def build_toolkit_wheelhouse(dest: Path, beside: Path | None = None) -> Path:
    """Wheels of the pinned toolkit and of everything it needs, for the image's Python; return
    their folder (keyed by the requirements and reused, as :func:`build_wheelhouse`).

    Both toolkits are published as sources only, and ``sagemaker-training`` compiles a C
    extension (``gethostname``, the MPI hostname shim), as does its dependency ``inotify_simple``
    1.2.1: so ``pip wheel`` builds them here, with the host's compiler, for the host's Python,
    which must be the image's (3.11, glibc), and fetches the other dependencies as published.
    Wheels that ``beside`` (the torch wheelhouse) already holds are pinned to its versions and
    left out, so the toolkit layer never replaces numpy under torch.
    """
    host = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if host != _IMAGE_PYTHON:
        raise ImageError(
            f"the toolkit's C extension must be built by Python {_IMAGE_PYTHON} (the image's), "
            f"and the harness runs on {host}",
            hint=f"run the harness from a Python {_IMAGE_PYTHON} environment to build the toolkit image",
        )
    requirements = [f"{name}=={version}" for name, version in TOOLKIT_VERSIONS.items()]
    present = _wheel_names(beside)
    target = dest / f"toolkit-py{host}-{_digest(host, *requirements, *present)}"
    if target.is_dir():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=dest))
    try:
        pins = partial / ".constraints.txt"
        pins.write_text("".join(f"{_name_version(name)}\n" for name in present), encoding="utf-8")
        _run(
            [sys.executable, "-m", "pip", "wheel", "--wheel-dir", str(partial), "-c", str(pins), *requirements],
            what=f"pip wheel {' '.join(requirements)}",
            hint="pip needs an index with the toolkit's sources and gcc with the Python headers",
        )
        pins.unlink()
        for duplicate in set(present) & {p.name for p in partial.glob("*.whl")}:
            (partial / duplicate).unlink()
        partial.rename(target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log.info("built toolkit wheelhouse %s in %.0f s", target, time.monotonic() - started)
    return target


def toolkit_build_blocker(client: DockerClient | None) -> str | None:
    """Why this machine cannot build the toolkit image, or None where it can, or where ``client``'s
    engine has it already.

    Asked before the build, so that a machine without a compiler runs the emulation at once, with
    the reason, rather than after a failed ``pip wheel``: the toolkit's C extension needs gcc,
    the Python headers, and a host Python of the image's version
    (:func:`build_toolkit_wheelhouse`)."""
    host = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if host != _IMAGE_PYTHON:
        reason = f"the toolkit image is built by a Python {_IMAGE_PYTHON} (the image's), and the harness runs on {host}"
    elif shutil.which("gcc") is None:
        reason = "the toolkit image needs gcc on this machine (sagemaker-training compiles a C extension)"
    elif not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        reason = f"the toolkit image needs the Python {host} headers on this machine (Python.h)"
    else:
        return None
    try:
        labels = client.images.get(f"{TOOLKIT_IMAGE}:latest").labels or {} if client else {}
    except ImageNotFound:
        labels = {}
    return None if labels.get(TOOLKIT_LABEL) == toolkit_description() else reason


def ensure_toolkit_image(client: DockerClient) -> str:
    """Return the tag of a PyTorch-DLC-like image: the torch image, the pinned SageMaker training
    toolkit and PyTorch toolkit, and ``SAGEMAKER_TRAINING_MODULE``, so that ``docker run IMAGE
    train`` runs the toolkit's ``train`` console script, which hands over to
    ``sagemaker_pytorch_container.training:main``, as in the DLCs. Built offline from wheels made
    on the host (:func:`build_toolkit_wheelhouse`) on top of :func:`ensure_torch_image`, whose
    layers it shares; labelled :data:`TOOLKIT_LABEL` (the rung reads the versions from it) and
    tagged ``harness/toolkit:latest`` too. Not reproduced from the DLCs: their entrypoint's
    hostname shim (``start_with_right_hostname.sh``, docs/toolkit.md), conda, MPI and extras.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "harness" / "wheels"
    torch_image = ensure_torch_image(client)
    torch_wheels = build_wheelhouse(_TORCH_REQUIREMENTS, cache)
    wheels = build_toolkit_wheelhouse(cache, beside=torch_wheels)
    steps = [
        f"ENV SAGEMAKER_TRAINING_MODULE={TOOLKIT_MODULE}",
        f'LABEL {TOOLKIT_LABEL}="{toolkit_description()}"',
        "WORKDIR /",
        'CMD ["train"]',
    ]
    tag = build_image(client, base=torch_image, steps=steps, wheelhouse=wheels, name=TOOLKIT_IMAGE)
    client.images.get(tag).tag(TOOLKIT_IMAGE, "latest")
    return tag


def _name_version(wheel: str) -> str:
    """``numpy==2.4.6`` from ``numpy-2.4.6-cp311-....whl`` (a wheel name's first two fields)."""
    name, version = wheel.split("-")[:2]
    return f"{name}=={version}"


def _debootstrap(suite: str, rootfs: Path) -> None:
    include = f"--include={','.join(_BASE_PACKAGES)}"
    argv = ["debootstrap", "--variant=minbase", include, suite, str(rootfs), _DEBIAN_MIRROR]
    try:
        _run(argv, what=f"debootstrap {suite}", hint=f"debootstrap needs root and {_DEBIAN_MIRROR}")
    except ImageError as exc:  # the log debootstrap points at is deleted with the rootfs
        own_log = rootfs / "debootstrap" / "debootstrap.log"
        if not own_log.is_file():
            raise
        tail = "\n".join(own_log.read_text(errors="replace").splitlines()[-20:])
        raise ImageError(f"{exc.message}\n--- debootstrap.log ---\n{tail}", hint=exc.hint) from None


def _dockerfile(base: str, steps: Sequence[str], *, with_wheels: bool) -> str:
    lines = [f"FROM {base}", f"LABEL {_LABEL}"]
    if with_wheels:  # deleted after the install so that jobs do not find them in /tmp
        lines += [
            f"COPY {_WHEELS} /tmp/harness-wheels",
            "RUN python3 -m pip install --no-index --no-cache-dir --find-links /tmp/harness-wheels"
            " /tmp/harness-wheels/*.whl && rm -rf /tmp/harness-wheels",
        ]
    return "\n".join([*lines, *steps, ""])


def _write_context(archive: IO[bytes], dockerfile: str, context: Path | None, wheelhouse: Path | None) -> None:
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for child in sorted(context.iterdir()) if context else ():
            tar.add(child, arcname=child.name)
        if wheelhouse:
            tar.add(wheelhouse, arcname=_WHEELS)
        info = tarfile.TarInfo(_DOCKERFILE)
        info.size = len(dockerfile.encode())
        tar.addfile(info, io.BytesIO(dockerfile.encode()))


def _tree_digests(root: Path | None) -> list[str]:
    if root is None:
        return []
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return [f"{p.relative_to(root)}={hashlib.sha256(p.read_bytes()).hexdigest()}" for p in files]


def _wheel_names(wheelhouse: Path | None) -> list[str]:
    """Names stand in for content: a wheel's name holds its version and platform, and an index
    never changes a released file, so a gigabyte need not be read on every call."""
    return sorted(p.name for p in wheelhouse.glob("*.whl")) if wheelhouse else []


def _image_id(client: DockerClient, ref: str) -> str:
    try:
        return str(client.images.get(ref).id)
    except ImageNotFound:
        pass
    try:
        return str(client.images.pull(ref).id)
    except APIError as exc:
        raise ImageError(
            f"base image {ref} is not here and cannot be pulled: {exc}",
            hint="make one without a registry with bootstrap_base_image(), or `docker load` it",
        ) from exc


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def _run(argv: list[str], *, what: str, hint: str) -> None:
    out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if out.returncode != 0:
        tail = "\n".join(out.stdout.splitlines()[-20:])
        raise ImageError(f"{what} failed (exit {out.returncode}):\n{tail}", hint=hint)


@contextmanager
def _scratch_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:  # unmount what an interrupted debootstrap left (/proc, /dev binds) before deleting
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(f"{path}/")), reverse=True):
            subprocess.run(["umount", "--lazy", mount], check=False)
        shutil.rmtree(path)
