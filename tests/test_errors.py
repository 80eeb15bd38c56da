"""Every error the harness raises on purpose is a :class:`HarnessError` with a hint (issue #24).

One test walks every module of the package and checks the exception classes it defines; the
others give the CLI input that really fails on a path of one of those classes and check that the
user gets the message and the hint, never a traceback, and the documented exit code.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_records import make_record

import harness
from harness.cli import main
from harness.errors import HarnessError
from harness.record import archives

PACKAGE = Path(harness.__file__).parent
#: Not walked: code that runs on its own, where the harness is not importable (in the user's job,
#: in a container), so it cannot derive from HarnessError; and ``__main__``, which runs the CLI.
STANDALONE = {
    "harness.probe": "runs inside the user's job and imports nothing of the harness",
    "harness.runtime.install_requirements": "runs alone inside each container (standard library only)",
    "harness.__main__": "runs the CLI when imported",
}

GOOD = """\
name: demo
source_dir: src
entry_point: train.py
"""


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if not any(name == skip or name.startswith(skip + ".") for skip in STANDALONE):
            names.append(name)
    return names


def _classes(owner: object, module: str, seen: set[type] | None = None) -> Iterator[type]:
    """The classes defined in ``module`` (at its top level or inside its classes)."""
    seen = set() if seen is None else seen
    for value in vars(owner).values():
        if inspect.isclass(value) and value.__module__ == module and value not in seen:
            seen.add(value)
            yield value
            yield from _classes(value, module, seen)


def one_error(err: str) -> tuple[str, str]:
    """stderr of a refused command: one ``harness: error:`` line and one ``hint:`` line, nothing
    else (no traceback); returns both."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("harness: error: "), err
    assert lines[1].startswith("hint: "), err
    return lines[0], lines[1]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("print('ok')\n")
    return tmp_path


@pytest.mark.unit
def test_the_walk_finds_the_modules_that_define_errors() -> None:
    """The walk below covers the package: the modules that define errors are in it."""
    modules = _modules()
    for name in (
        "harness.errors",
        "harness.spec.s3",
        "harness.runtime.localstack",
        "harness.record.archives",
        "harness.runtime.requirements",
    ):
        assert name in modules
    assert not [m for m in modules if m.startswith(("harness.probe", "harness.runtime.install_requirements"))]


@pytest.mark.unit
@pytest.mark.parametrize("module", _modules())
def test_every_exception_class_of_the_harness_is_a_harness_error(module: str) -> None:
    """Warning categories (``warnings.warn`` needs a ``Warning``) and ``BaseException``\\ s that
    are meant to pass every ``except Exception`` (``Interrupted``) are not errors of the tree."""
    try:
        loaded = importlib.import_module(module)
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] == "harness":
            raise
        pytest.skip(f"{module} needs {exc.name}, an optional dependency not installed here")
    outside = [
        cls.__qualname__
        for cls in _classes(loaded, module)
        if issubclass(cls, Exception) and not issubclass(cls, Warning) and not issubclass(cls, HarnessError)
    ]
    assert not outside, f"{module}: {outside} do not derive from harness.errors.HarnessError"


def _raises_without_a_hint(source: str, errors: set[str]) -> list[int]:
    """Lines of ``source`` that raise one of ``errors`` (class names) built without ``hint=``."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Raise)
        and isinstance(node.exc, ast.Call)
        and getattr(node.exc.func, "id", getattr(node.exc.func, "attr", None)) in errors
        and not any(keyword.arg in ("hint", None) for keyword in node.exc.keywords)
    ]


@pytest.mark.unit
def test_every_harness_error_raised_says_what_to_do() -> None:
    """A raise of a HarnessError (or a subclass) gives a hint, unless its class makes its own
    (an ``__init__`` that passes ``hint=``): the hint is what the CLI prints under the error."""
    errors: set[str] = set()
    own_hint: set[str] = set()
    for module in _modules():
        try:
            loaded = importlib.import_module(module)
        except ImportError:  # an optional dependency (airflow): its errors are named by the others
            continue
        for cls in _classes(loaded, module):
            if issubclass(cls, HarnessError):
                errors.add(cls.__name__)
                init = vars(cls).get("__init__")
                if init is not None and "hint" not in inspect.signature(init).parameters:
                    own_hint.add(cls.__name__)
    assert {"NoRungCanRun", "RequiredRungUnavailable"} <= own_hint
    assert {"HarnessError", "UsageError", "JobSpecError", "CheckpointError"} <= errors
    missing = {
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in PACKAGE.rglob("*.py")
        if "probe" not in path.parts
        for line in _raises_without_a_hint(path.read_text(encoding="utf-8"), errors - own_hint)
    }
    assert sorted(missing) == []
    assert _raises_without_a_hint("raise UsageError('x')\nraise UsageError('y', hint='z')", {"UsageError"}) == [1]


@pytest.mark.unit
def test_a_malformed_s3_uri_is_refused_with_a_hint(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = workdir / "job.yaml"
    job.write_text(GOOD + "channels:\n  train: s3://Team_Data/train/\n")
    records = workdir / "records"
    assert main(["run", str(job), "--records", str(records)]) == 2
    error, hint = one_error(capsys.readouterr().err)
    assert "channels.train.source: 's3://Team_Data/train/' is not an S3 URI of the form s3://bucket/key" in error
    assert "docs/job-spec.md" in hint
    assert not records.exists()


@pytest.mark.unit
def test_bisect_with_too_small_a_budget_says_how_many_runs_it_needs(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = workdir / "job.yaml"
    job.write_text(GOOD)
    records = workdir / "records"
    assert main(["bisect", str(job), "--max-runs", "1", "--records", str(records)]) == 2
    error, hint = one_error(capsys.readouterr().err)
    assert error == "harness: error: --max-runs 1: the two rungs alone take two runs"
    assert hint == "hint: give --max-runs 2 or more (default 16)"
    assert not records.exists()


@pytest.mark.unit
def test_an_archive_over_the_caps_is_a_finding_with_the_refusals_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``diff`` of records whose checkpoints are in an archive over the caps: the refusal
    (:class:`~harness.record.archives.ArchiveRefused`) is a divergence that says why and what to do,
    not a damaged archive (the hint of one that does not open)."""
    roots = []
    for rung in ("local", "docker"):
        record = make_record(tmp_path / "records", rung, losses=[1.0, 0.5])
        tree = tmp_path / rung / "algo-1"
        (tree / "model").mkdir(parents=True)
        (tree / "model" / "model.pt").write_bytes(os.urandom(4096))  # bytes differ: streamed out to compare
        archives.collect({"algo-1": tree}, record.root)
        roots.append(str(record.root))
    monkeypatch.setattr(archives, "MAX_ARCHIVE_BYTES", 1024)
    assert main(["diff", *roots]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    out = " ".join(captured.out.split())  # unwrapped
    assert "model.tar.gz cannot be read on local" in out and "(artifact-unreadable)" in out
    assert "unpacks to more than 1.0 KiB ('model.pt' alone is 4.0 KiB)" in out
    assert "hint: an archive this large is refused as a gzip bomb would be; look at what the job wrote" in out
    assert "the archive is damaged" not in out and "Hint:" not in out


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow  # starts the local rung (its namespace probe), which then fails downloading the channel
def test_an_s3_endpoint_that_does_not_answer_is_one_error_with_a_hint(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("boto3", reason="boto3 is in the [s3] extra")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(workdir / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(workdir / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(workdir / "cache"))
    job = workdir / "job.yaml"
    job.write_text(GOOD + "channels:\n  train: s3://team-data/train/\n")
    records = workdir / "records"
    assert main(["run", str(job), "--rung", "local", "--records", str(records)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if not line.startswith("[local] ")]  # the rung's progress
    assert len(lines) == 2, err
    assert lines[0].startswith("harness: error: downloading s3://team-data/train/: EndpointConnectionError"), err
    assert lines[1] == "hint: is the endpoint up (harness localstack status) and are credentials set?"
    (manifest,) = records.glob("*/manifest.json")
    assert json.loads(manifest.read_text())["error"] == lines[0].removeprefix("harness: error: ")


@pytest.mark.slow  # makes a virtual environment and runs pip (offline)
def test_requirements_pip_cannot_install_fail_the_run_and_the_record_gives_the_hint(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """:class:`~harness.runtime.requirements.InstallFailed` is the job's failure, not the CLI's: every
    host fails as the launcher would (exit 1), and the ``requirements`` rung fact keeps the hint
    (``harness show`` prints it)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(workdir / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # no network: pip fails as fast as it can
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    (workdir / "src" / "requirements.txt").write_text("no-such-package-of-the-harness-tests==1.0\n")
    job = workdir / "job.yaml"
    job.write_text(GOOD)
    records = workdir / "records"
    assert main(["run", str(job), "--rung", "local", "--records", str(records)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert "harness: error:" not in captured.err  # a failed job, reported as one: not an error of the harness
    (record,) = records.iterdir()
    fact = json.loads((record / "manifest.json").read_text())["rung_facts"]["requirements"]
    assert fact["failed"] == "pip exited 1 (pip install)"
    assert fact["hint"].startswith("fix requirements.txt in source_dir")
    assert main(["show", str(record)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "hint: fix requirements.txt in source_dir" in out and "log.txt" in out


@pytest.mark.unit
def test_a_scenarios_s3_data_that_is_no_s3_uri_is_refused_with_a_hint(tmp_path: Path) -> None:
    from harness.errors import JobSpecError
    from harness.ladder.scenario import load_scenario

    (tmp_path / "scenario.yaml").write_text("s3_data: {'s3:/bucket/data': data}\nexpect: {outcome: parity}\n")
    with pytest.raises(JobSpecError) as raised:
        load_scenario(tmp_path)
    assert "s3:/bucket/data" in raised.value.message and "s3://bucket/key" in raised.value.message
    assert raised.value.hint
