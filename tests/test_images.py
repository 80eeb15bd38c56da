"""Images built without a registry: content-derived tags, reuse, and the torch image."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from docker import DockerClient
from docker.models.images import ImageCollection

from harness.errors import ImageError
from harness.runtime import images


@pytest.fixture(scope="module")
def base_image(engine: DockerClient) -> str:
    return images.bootstrap_base_image(engine)


@pytest.fixture
def built(engine: DockerClient) -> Iterator[list[str]]:
    """Tags a test built; removed afterwards, since each test builds from fresh content."""
    tags: list[str] = []
    yield tags
    for tag in set(tags):
        engine.images.remove(tag, force=True)


def _run(client: DockerClient, image: str, *command: str) -> str:
    out = client.containers.run(image, list(command), remove=True, labels={"harness.managed": "true"})
    return bytes(out).decode().strip()


@pytest.mark.docker
def test_same_content_gives_the_same_tag_and_no_rebuild(
    engine: DockerClient,
    base_image: str,
    built: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "hello.txt").write_text(f"hello {uuid.uuid4()}\n")
    steps = ["COPY hello.txt /hello.txt"]
    first = images.build_image(engine, base=base_image, steps=steps, context=tmp_path)
    built.append(first)
    image = engine.images.get(first)
    assert image.labels["harness.managed"] == "true"

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the image was built again")

    monkeypatch.setattr(ImageCollection, "build", no_build)
    again = images.build_image(engine, base=base_image, steps=steps, context=tmp_path)
    assert again == first
    assert engine.images.get(again).id == image.id
    assert _run(engine, first, "cat", "/hello.txt").startswith("hello ")


@pytest.mark.docker
def test_changed_dockerfile_text_gives_another_tag(engine: DockerClient, base_image: str, built: list[str]) -> None:
    nonce = uuid.uuid4().hex
    one = images.build_image(engine, base=base_image, steps=[f"ENV NONCE={nonce}-1"])
    built.append(one)
    two = images.build_image(engine, base=base_image, steps=[f"ENV NONCE={nonce}-2"])
    built.append(two)
    assert one != two
    assert engine.images.get(one).id != engine.images.get(two).id


@pytest.mark.docker
def test_changed_context_file_gives_another_tag(
    engine: DockerClient, base_image: str, built: list[str], tmp_path: Path
) -> None:
    steps = ["COPY hello.txt /hello.txt"]
    (tmp_path / "hello.txt").write_text(f"one {uuid.uuid4()}\n")
    one = images.build_image(engine, base=base_image, steps=steps, context=tmp_path)
    built.append(one)
    (tmp_path / "hello.txt").write_text(f"two {uuid.uuid4()}\n")
    two = images.build_image(engine, base=base_image, steps=steps, context=tmp_path)
    built.append(two)
    assert one != two


@pytest.mark.docker
@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["python3", "-c", "import torch; print(torch.__version__)"], "2.13.0"),
        (["python3", "-c", "import numpy; print(numpy.__name__)"], "numpy"),
        (["pip", "--version"], "pip "),
        (["python", "--version"], "Python 3.11"),
        # PEP 668 would refuse this before looking at what is installed
        (["pip", "install", "--no-index", "numpy"], "Requirement already satisfied"),
    ],
)
def test_torch_image_has_python_pip_and_torch(engine: DockerClient, command: list[str], expected: str) -> None:
    tag = images.ensure_torch_image(engine)
    assert engine.images.get(tag).labels["harness.managed"] == "true"
    assert _run(engine, tag, *command).startswith(expected)


@pytest.mark.unit
def test_missing_debootstrap_is_an_image_error_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    no_images: Any = SimpleNamespace(images=SimpleNamespace(list=lambda name: []))
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ImageError, match="debootstrap is not installed") as caught:
        images.bootstrap_base_image(no_images, tag="harness/base:absent")
    assert caught.value.hint is not None
    assert "apt-get install debootstrap" in caught.value.hint
