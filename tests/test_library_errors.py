"""The errors the distributed libraries raise (``harness.judge.library_errors``): extracted from the
installed sources, kept as data, and each recognised in a log as its library's refusal."""

from __future__ import annotations

import ast
import importlib.metadata
import json
from pathlib import Path

import pytest

from harness.judge import extract_library_errors, library_errors, logs
from harness.judge.findings import ECHOES

pytestmark = pytest.mark.unit

DATA = Path(library_errors.__file__).resolve().with_name("library_errors.json")


def _release(version: str) -> str:
    return version.split("+", 1)[0]


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_the_data_is_what_the_installed_libraries_raise() -> None:
    """The pins moved without a rerun of the script, or its output was edited by hand."""
    committed = json.loads(DATA.read_text())
    missing = [name for name in library_errors.LIBRARIES if not _installed(name)]
    if missing:  # README's install has the test extra only; CI installs the corpus extra too
        pytest.skip(f"{', '.join(missing)} not installed: pip install -e '.[corpus]' to check the data")
    installed = {name: importlib.metadata.version(name) for name in library_errors.LIBRARIES}
    assert {k: _release(v) for k, v in committed["versions"].items()} == {
        k: _release(v) for k, v in installed.items()
    }, "rerun: python -m harness.judge.extract_library_errors"
    assert committed["errors"] == extract_library_errors.extract().errors, (
        "rerun: python -m harness.judge.extract_library_errors"
    )


def test_every_component_and_enough_messages_are_known() -> None:
    index = library_errors.index()
    causes = {e.component.cause for e in index.errors}
    assert causes == set(library_errors.CAUSES)
    assert len(index.errors) > 1500
    assert set(library_errors.CAUSES) <= set(ECHOES)  # what explains a python-exception explains these


def test_every_message_is_recognised_as_its_own_components() -> None:
    index = library_errors.index()
    for error in index.errors:
        found = index.find(f"[rank1]: {error.exception}: {error.example}")
        assert found is not None, error
        assert found.component.cause == error.component.cause, (error, found)


#: A rank's log as torchrun's --tee writes it: DistributedSampler given one node's processes as
#: num_replicas (tests/data/faults/sampler_replicas_per_node, torch 2.13.0+cpu).
SAMPLER_LOG = """\
2026-12-06T21:25:57.606191Z [rank3]: Traceback (most recent call last):
2026-12-06T21:25:57.606237Z [rank3]:   File "/opt/ml/code/train.py", line 29, in <module>
2026-12-06T21:25:57.606246Z [rank3]:     sampler = DistributedSampler(dataset, num_replicas=processes, rank=rank, shuffle=True)
2026-12-06T21:25:57.606254Z [rank3]:   File "{raised_in}", line 84, in __init__
2026-12-06T21:25:57.606257Z [rank3]:     raise ValueError(
2026-12-06T21:25:57.606261Z [rank3]: ValueError: Invalid rank 3, rank should be in the interval [0, 1]
"""  # noqa: E501


@pytest.mark.parametrize(
    ("raised_in", "cause"),
    [
        ("/usr/lib/python3/site-packages/torch/utils/data/distributed.py", "sampler-refused"),  # the library's check
        ("/opt/ml/code/sampling.py", "python-exception"),  # the same words, raised by the job's own code
    ],
)
def test_an_exception_is_a_librarys_refusal_only_where_that_library_raised_it(
    raised_in: str, cause: str, tmp_path: Path
) -> None:
    log = tmp_path / "rank-3.log"
    log.write_text(SAMPLER_LOG.format(raised_in=raised_in))
    [(_, _, signature, _, frame, _)] = list(logs.scan(log, logs.catalogue()))
    assert signature.id == cause
    if cause != "python-exception":
        assert frame == "train.py:29"  # the job's own line that called the library
        assert "torch/utils/data/distributed.py:" in signature.hint and "__init__()" in signature.explain


def test_a_message_of_the_library_without_a_traceback_stays_an_exception() -> None:
    line = "[rank0]: ValueError: Invalid rank 3, rank should be in the interval [0, 1]"
    signature, _ = logs.catalogue().classify(line) or (None, None)
    assert signature is not None and signature.id == "python-exception"
    assert library_errors.index().find(line, raised_in="/x/site-packages/torch/utils/data/distributed.py")
    assert library_errors.index().find(line, raised_in="/opt/ml/code/train.py") is None


def test_extraction_reads_literal_and_formatted_messages(tmp_path: Path) -> None:
    source = """
def check(world, rank):
    if rank >= world:
        raise ValueError(f"Invalid rank {rank}, rank should be in the interval [0, {world - 1}]")
    raise RuntimeError("Process group is not initialized yet, call init_process_group first\\nsee the docs")
def short():
    raise ValueError("too short")
def variable(msg):
    raise ValueError(msg)
"""
    path = tmp_path / "mod.py"
    path.write_text(source)
    found = list(extract_library_errors._raises(path, "torch/distributed/mod.py"))
    assert [(e.parts, e.exception, e.function) for e in found] == [
        (("Invalid rank ", ", rank should be in the interval [0, ", "]"), "ValueError", "check"),
        (("Process group is not initialized yet, call init_process_group first",), "RuntimeError", "check"),
    ]
    assert found[0].pattern.match("Invalid rank 5, rank should be in the interval [0, 3]")
    assert not found[0].pattern.match("Invalid rank, rank should be in the interval [0, 3]")
    ast.parse(source)  # the sample itself is valid Python
