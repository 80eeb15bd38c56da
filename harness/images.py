"""Container images for the docker and sagemaker-local rungs, built without a registry.

Where no registry answers, ``FROM python:3.11-slim`` cannot be pulled, so the base image is made
from Debian packages (:func:`bootstrap_base_image`) and Python packages come from a wheelhouse
downloaded on the host (:func:`build_wheelhouse`) and installed offline (:func:`build_image`).
A team with a registry skips the first step and passes its own base, e.g. ``python:3.11-slim``.

Every image is tagged by a hash of what went into it, so asking again for the same image finds
the first one and returns at once, and a changed input can never be served a stale image. Every
image carries the label ``harness.managed=true``, so leftovers can be found and removed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from docker import DockerClient
from docker.errors import APIError, BuildError, ImageNotFound
from docker.utils import parse_repository_tag

from harness.errors import ImageError

__all__ = [
    "LABELS",
    "TORCH_REQUIREMENTS",
    "bootstrap_base_image",
    "build_image",
    "build_wheelhouse",
    "ensure_torch_image",
]

log = logging.getLogger(__name__)

LABELS = {"harness.managed": "true"}
TORCH_REQUIREMENTS = ("torch==2.13.0", "numpy")

_DEBIAN_MIRROR = "http://deb.debian.org/debian"
# SageMaker's training driver looks for `python3 || python` and `pip3 || pip`; other launchers
# call `python`, which python-is-python3 provides.
_BASE_PACKAGES = ("python3", "python3-pip", "python3-venv", "python-is-python3", "ca-certificates")
# Debian marks its Python "externally managed" (PEP 668), so `pip install` outside a venv fails.
# python:* and SageMaker images allow it; deleting the marker (rather than setting
# PIP_BREAK_SYSTEM_PACKAGES) keeps the job's environment free of variables those images lack.
_BASE_REMOVED = ("usr/lib/python3*/EXTERNALLY-MANAGED",)
# An imported rootfs has no image config; give it what python:* images set.
_BASE_CHANGES = (
    "LABEL harness.managed=true",
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)
_DOCKERFILE = ".harness.Dockerfile"
_WHEELS = ".harness-wheels"


def bootstrap_base_image(client: DockerClient, *, suite: str = "bookworm", tag: str | None = None) -> str:
    """Make a Debian ``suite`` image with python3, pip and venv, and return its tag.

    The default tag hashes the recipe (suite, mirror, packages, fixes), so a changed recipe
    makes a new image and an unchanged one is reused. Needs root, debootstrap and the Debian
    mirror (about a minute); nothing else from the network.
    """
    recipe = (suite, _DEBIAN_MIRROR, *_BASE_PACKAGES, *_BASE_REMOVED, *_BASE_CHANGES)
    tag = tag or f"harness/base:{suite}-{_digest(*recipe)}"
    if _exists(client, tag):
        return tag
    if shutil.which("debootstrap") is None:
        raise ImageError(
            f"cannot make base image {tag}: debootstrap is not installed",
            hint="apt-get install debootstrap, or pass an existing base image to build_image()",
        )
    started = time.monotonic()
    with _scratch_dir("harness-rootfs-") as scratch:
        rootfs = scratch / "rootfs"
        _debootstrap(suite, rootfs)
        for pattern in _BASE_REMOVED:
            for path in rootfs.glob(pattern):
                path.unlink()
        archive = scratch / "rootfs.tar"
        _run(["tar", "-C", str(rootfs), "-cf", str(archive), "."], what="packing the rootfs", hint="check free space in $TMPDIR")
        repository, version = parse_repository_tag(tag)
        try:
            client.api.import_image_from_file(str(archive), repository=repository, tag=version, changes=list(_BASE_CHANGES))
        except APIError as exc:
            raise ImageError(f"docker could not import the {suite} rootfs as {tag}: {exc}", hint="see the dockerd log") from exc
    if not _exists(client, tag):
        raise ImageError(f"importing the {suite} rootfs did not produce {tag}", hint="see the dockerd log")
    log.info("bootstrapped %s in %.0f s", tag, time.monotonic() - started)
    return tag


def build_wheelhouse(packages: Sequence[str], dest: Path, python_version: str = "3.11") -> Path:
    """Download wheels of ``packages`` and their dependencies, for ``python_version``, and return the folder.

    Runs the host's pip, so the host's pip configuration (index, find-links, certificates) applies;
    the image then installs the wheels with no network. The folder under ``dest`` is keyed by the
    requirements and reused when present. Wheels only: an image may have no compiler.
    """
    target = dest / f"py{python_version}-{_digest(python_version, *sorted(packages))}"
    if target.is_dir():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=dest))
    try:
        _run(
            [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--python-version", python_version, "--dest", str(partial), *packages],
            what=f"pip download {' '.join(packages)}",
            hint=f"the host's pip needs an index or find-links with wheels of these for CPython {python_version}",
        )
        partial.rename(target)
    except OSError:
        if not target.is_dir():  # another process renaming first is fine; anything else is not
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
    """Build ``steps`` (Dockerfile lines) on ``base``, after installing ``wheelhouse``; return the tag.

    ``context`` is a folder whose files the steps can ``COPY``. The tag is ``name:<hash>`` of the
    Dockerfile, the context files, the wheel names and the base image's id, so a rebuilt base
    gives a new image. The wheels are installed with the base's own ``python3 -m pip``, so any
    base with python3 and pip works; their files stay in a lower layer (the legacy builder has
    no build mounts), which costs disk but nothing else for images that are never pushed.
    """
    base_id = _image_id(client, base)
    dockerfile = _dockerfile(base, steps, with_wheels=wheelhouse is not None)
    tag = f"{name}:{_digest(base_id, dockerfile, *_tree_digests(context), *_wheel_names(wheelhouse))}"
    if _exists(client, tag):
        return tag
    started = time.monotonic()
    with tempfile.TemporaryFile() as archive:
        _write_context(archive, dockerfile, context, wheelhouse)
        archive.seek(0)
        try:
            client.images.build(fileobj=archive, custom_context=True, dockerfile=_DOCKERFILE, tag=tag, rm=True, forcerm=True, timeout=None)
        except BuildError as exc:
            log_tail = "".join(str(chunk.get("stream", "")) for chunk in exc.build_log)[-3000:]
            raise ImageError(f"building {tag} on {base} failed: {exc.msg}\n{log_tail}", hint="the step that failed is at the end of the log above") from exc
        except APIError as exc:
            raise ImageError(f"docker refused to build {tag}: {exc}", hint="see the dockerd log") from exc
    log.info("built %s in %.0f s", tag, time.monotonic() - started)
    return tag


def ensure_torch_image(client: DockerClient) -> str:
    """Return the tag of an image with python3, pip, torch and numpy, building what is missing.

    This is the image tests and CI run torch jobs in. The wheelhouse is cached under
    ``$XDG_CACHE_HOME/harness/wheels`` (``~/.cache`` by default). A first build takes a few
    minutes (debootstrap, the torch download, the install); later calls take about a second.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "harness" / "wheels"
    base = bootstrap_base_image(client)
    wheels = build_wheelhouse(TORCH_REQUIREMENTS, cache)
    return build_image(client, base=base, wheelhouse=wheels, name="harness/torch")


def _debootstrap(suite: str, rootfs: Path) -> None:
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(_BASE_PACKAGES)}", suite, str(rootfs), _DEBIAN_MIRROR]
    try:
        _run(argv, what=f"debootstrap {suite}", hint=f"debootstrap needs root and access to {_DEBIAN_MIRROR}")
    except ImageError as exc:
        # debootstrap points at its own log, which is about to be deleted with the rootfs.
        own_log = rootfs / "debootstrap" / "debootstrap.log"
        if not own_log.is_file():
            raise
        tail = "\n".join(own_log.read_text(errors="replace").splitlines()[-20:])
        raise ImageError(f"{exc.message}\n--- debootstrap.log ---\n{tail}", hint=exc.hint) from None


def _dockerfile(base: str, steps: Sequence[str], *, with_wheels: bool) -> str:
    lines = [f"FROM {base}", "LABEL harness.managed=true"]
    if with_wheels:  # removed again so that the job does not see them in /tmp
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
        data = dockerfile.encode()
        info = tarfile.TarInfo(_DOCKERFILE)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _tree_digests(root: Path | None) -> list[str]:
    if root is None:
        return []
    files = sorted(path for path in root.rglob("*") if path.is_file())
    return [f"{path.relative_to(root)}={hashlib.sha256(path.read_bytes()).hexdigest()}" for path in files]


def _wheel_names(wheelhouse: Path | None) -> list[str]:
    """Wheel file names carry name, version and platform, and an index never changes a released
    file, so names stand in for content without reading a gigabyte on every call."""
    return sorted(path.name for path in wheelhouse.glob("*.whl")) if wheelhouse else []


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
            hint="make one without a registry with bootstrap_base_image(), or docker load it",
        ) from exc


def _exists(client: DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
    except ImageNotFound:
        return False
    return True


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def _run(argv: list[str], *, what: str, hint: str) -> None:
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-20:])
        raise ImageError(f"{what} failed (exit {proc.returncode}):\n{tail}", hint=hint)


@contextmanager
def _scratch_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        _unmount_below(path)
        shutil.rmtree(path)


def _unmount_below(root: Path) -> None:
    """Unmount what an interrupted debootstrap left mounted in the rootfs (/proc, /sys, /dev
    binds), so that removing the rootfs cannot walk into the host's."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{root}/")), reverse=True):
        subprocess.run(["umount", "--lazy", mount], check=False)
