"""``requirements.txt`` in ``source_dir`` is installed before the entry point, as SageMaker's
launchers install it: on ``local`` into a cached environment (never the user's), on ``docker`` in
each container from a wheelhouse the host made; bad requirements fail the job, not the harness.

The package is ``xmltodict==0.14.2``: one pure-Python module, and not in the harness's environment
(checked below with pip, so that a test can never pass because it was there already)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from docker import DockerClient

from harness.backends import get_backend, sdk_installs
from harness.record.run_record import RunRecord
from harness.runtime import requirements
from harness.spec.job import JobSpec, load_job

PACKAGE, VERSION = "xmltodict", "0.14.2"  # tabulate came with Airflow: it must be in no extra
MISSING = "harness-no-such-package-0f3a9c==1.0"
SCRIPT = f"""\
import os, sys
import {PACKAGE}
rank = os.environ.get("RANK", "-")
line = " ".join(["imported {PACKAGE}", {PACKAGE}.__version__, "rank", rank, "python", sys.executable])
print(line, flush=True)  # one write: under PYTHONUNBUFFERED print writes each argument, and ranks interleave
"""


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


@functools.cache
def _installed_here() -> bool:
    return _pip("show", PACKAGE).returncode == 0


@pytest.fixture(autouse=True)
def package_is_not_in_the_harness_environment(request: pytest.FixtureRequest) -> None:
    """Asked of pip once, for the tests that install the package; a plan (the unit tests) installs
    nothing, and starts no process."""
    if request.node.get_closest_marker("unit") is None:
        assert not _installed_here(), f"{PACKAGE} is installed in {sys.prefix}: pick another package"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of this test's own, so that 'built' and 'reused' do not depend on earlier runs."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "harness" / "requirements"


def _job(
    tmp_path: Path, lines: str, *, script: str = SCRIPT, name: str = "with-requirements", **extra: object
) -> JobSpec:
    src = tmp_path / name / "src"
    src.mkdir(parents=True)
    (src / "train.py").write_text(script)
    (src / "requirements.txt").write_text(lines)
    spec = [f"name: {name}", "source_dir: src", "entry_point: train.py", "max_run: 300"]
    spec += [f"{key}: {value}" for key, value in extra.items()]
    (tmp_path / name / "job.yaml").write_text("\n".join(spec) + "\n")
    return load_job(tmp_path / name / "job.yaml")


def _requirements(record: RunRecord, host: str = "algo-1") -> dict[str, object]:
    return dict(json.loads((record.root / "hosts" / host / "received" / "requirements.json").read_text()))


@pytest.mark.unit
def test_local_plan_names_the_cached_environment_and_builds_nothing(tmp_path: Path, cache: Path) -> None:
    job = _job(tmp_path, f"{PACKAGE}=={VERSION}\n", instance_count=2)
    plan = get_backend("local").plan(job)
    environment = plan.facts["requirements"]["environment"]
    assert Path(environment).parent == cache and Path(environment).name.startswith("venv-")
    assert plan.hosts["algo-2"].command[0] == f"{environment}/bin/python"
    assert not cache.exists()
    same = _job(tmp_path, f"{PACKAGE}=={VERSION}\n", name="same-requirements")
    other = _job(tmp_path, f"{PACKAGE}==0.13.0\n", name="other-requirements")
    assert requirements.local_environment(same) == requirements.local_environment(job)
    assert requirements.local_environment(other) != requirements.local_environment(job)


@pytest.mark.unit
def test_docker_plan_says_how_the_requirements_are_installed(tmp_path: Path, cache: Path) -> None:
    docker = get_backend("docker", gpus=False)
    how = docker.plan(_job(tmp_path, f"{PACKAGE}=={VERSION}\n")).facts["requirements"]["how"]
    assert "in each container at start" in how and "--no-index" in how
    assert not cache.exists()
    plain = JobSpec(name="plain", source_dir=Path(__file__).parent, entry_point=Path(__file__).name)
    assert "requirements" not in docker.plan(plain).facts  # no requirements.txt there


@pytest.mark.slow
def test_local_installs_into_a_cached_environment_reused_and_never_into_the_users(tmp_path: Path, cache: Path) -> None:
    freeze_before = _pip("freeze").stdout
    job = _job(tmp_path, f"{PACKAGE}=={VERSION}\n", instance_count=2)
    first = get_backend("local").run(job, tmp_path / "records")
    assert first.status == "succeeded", first.host_log("algo-1").read_text()[-3000:]
    for host in ("algo-1", "algo-2"):
        info = _requirements(first, host)
        assert info["installed"] == {PACKAGE: VERSION} and info["exit_code"] == 0 and info["reused"] is False
        log = first.host_log(host).read_text()
        assert "Installing dependencies from requirements.txt:" in log  # the toolkit's line
        assert f"imported {PACKAGE} {VERSION}" in log
        fingerprint = json.loads((first.root / "hosts" / host / "fingerprint.json").read_text())
        assert fingerprint["packages"][PACKAGE] == VERSION
    environment = Path(str(_requirements(first)["environment"]))
    assert environment.parent == cache and (environment / "bin" / "python").exists()
    assert first.manifest.rung_facts["requirements"]["installed"] == {PACKAGE: VERSION}
    built = (environment / "harness-install.json").stat()

    second = get_backend("local").run(job, tmp_path / "records")
    assert second.status == "succeeded"
    info = _requirements(second)
    assert info["reused"] is True and info["environment"] == str(environment)
    assert (environment / "harness-install.json").stat().st_mtime_ns == built.st_mtime_ns  # not rebuilt
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == [environment.name]
    assert f"imported {PACKAGE} {VERSION}" in second.host_log("algo-2").read_text()
    assert _pip("freeze").stdout == freeze_before
    assert _pip("show", PACKAGE).returncode != 0


@pytest.mark.slow
def test_local_torchrun_ranks_run_in_the_cached_environment(tmp_path: Path, cache: Path) -> None:
    """``torchrun`` on PATH is the cached environment's, so every rank it starts imports the package."""
    job = _job(
        tmp_path, f"{PACKAGE}=={VERSION}\n", launcher="model-trainer", distribution="torchrun", processes_per_host=2
    )
    record = get_backend("local").run(job, tmp_path / "records")
    assert record.status == "succeeded", record.host_log("algo-1").read_text()[-3000:]
    log = record.host_log("algo-1").read_text()
    assert "Installing requirements" in log  # sm_train.sh's line
    environment = str(_requirements(record)["environment"])
    for rank in (0, 1):
        assert f"imported {PACKAGE} {VERSION} rank {rank} python {environment}/bin/python" in log


@pytest.mark.slow
def test_concurrent_runs_build_the_environment_once(tmp_path: Path, cache: Path) -> None:
    """Two runs starting at once: one builds under the lock, the other waits and reuses it."""
    job = _job(tmp_path, f"{PACKAGE}=={VERSION}\n")
    cached = requirements.local_environment(job)
    assert cached is not None and job.source_dir is not None
    source_dir, outcomes = job.source_dir, list[bool]()

    def build() -> None:
        outcomes.append(requirements._ensure_venv(cached, source_dir, ["Installing"])[1])

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert sorted(outcomes) == [False, True]


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher, says", [("toolkit", "InstallRequirementsError"), ("model-trainer", "Training Execution failed")]
)
def test_local_bad_requirements_fail_the_job_with_pips_reason(
    tmp_path: Path, cache: Path, launcher: str, says: str
) -> None:
    job = _job(tmp_path, f"{MISSING}\n", launcher=launcher, instance_count=2)
    record = get_backend("local").run(job, tmp_path / "records")
    assert record.status == "failed" and record.manifest.error is None
    for host in ("algo-1", "algo-2"):
        result = record.manifest.hosts[host]
        assert result.exit_code == 1 and result.failure_written_by == "launcher"
        assert result.failure_reason.startswith(says)
        assert f"No matching distribution found for {MISSING}" in record.host_log(host).read_text()
        assert "imported" not in record.host_log(host).read_text()
    if launcher == "toolkit":
        assert f"No matching distribution found for {MISSING}" in (record.manifest.hosts["algo-1"].failure_reason or "")
    assert not [p for p in cache.iterdir() if p.is_dir()]  # a failed environment is not cached
    assert record.manifest.ranks == {}


# --- docker ----------------------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.slow
def test_docker_installs_in_each_container_from_the_hosts_wheelhouse(
    engine: DockerClient, torch_image: str, tmp_path: Path
) -> None:
    job = _job(tmp_path, f"{PACKAGE}=={VERSION}\n", instance_count=2)
    record = get_backend("docker", gpus=False).run(job, tmp_path / "records")
    assert record.status == "succeeded", record.host_log("algo-1").read_text()[-3000:]
    for host in ("algo-1", "algo-2"):
        info = _requirements(record, host)
        assert info["installed"] == {PACKAGE: VERSION} and info["exit_code"] == 0
        assert info["cwd"] == "/opt/ml/code" and info["command"][1:] == [
            "-m",
            "pip",
            "install",
            "-r",
            "requirements.txt",
        ]
        assert [wheel.split("-")[:2] for wheel in info["wheels"]] == [[PACKAGE, VERSION]]
        log = record.host_log(host).read_text()
        assert "Looking in links: /opt/harness/wheels" in log and "Looking in indexes" not in log  # offline
        assert f"imported {PACKAGE} {VERSION} rank - python /usr/bin/python3" in log
        assert json.loads((record.root / "hosts" / host / "received" / "command.json").read_text())["argv"][1:3] == [
            "--",
            "train.py",
        ]  # the launcher's own command, not the installer's
    assert record.manifest.rung_facts["requirements"]["installed"] == {PACKAGE: VERSION}
    again = get_backend("docker", gpus=False).run(job, tmp_path / "records")
    assert again.status == "succeeded" and _requirements(again)["wheelhouse_reused"] is True
    assert _requirements(again)["wheelhouse"] == _requirements(record)["wheelhouse"]


@pytest.mark.docker
@pytest.mark.slow
def test_docker_bad_requirements_fail_before_any_container(
    engine: DockerClient, torch_image: str, tmp_path: Path
) -> None:
    job = _job(tmp_path, f"{MISSING}\n")
    record = get_backend("docker", gpus=False).run(job, tmp_path / "records")
    assert record.status == "failed" and record.manifest.error is None
    result = record.manifest.hosts["algo-1"]
    assert result.exit_code == 1 and result.failure_written_by == "launcher"
    assert result.failure_reason.startswith("InstallRequirementsError")
    assert f"No matching distribution found for {MISSING}" in result.failure_reason
    assert "container" not in result.model_dump()


@pytest.mark.docker
@pytest.mark.slow
def test_docker_install_failing_in_the_container_is_the_launchers_failure(
    engine: DockerClient, torch_image: str, tmp_path: Path
) -> None:
    """A requirement whose marker only the image's Python meets: the host's pip skips it, the
    container's pip (offline) cannot find it; the entry point never runs."""
    image_python = requirements.image_python(engine, torch_image, {})["version"]
    host_python = ".".join(map(str, sys.version_info[:3]))
    if image_python == host_python:
        pytest.skip(f"the image's Python is the host's ({host_python}): no marker tells them apart")
    job = _job(tmp_path, f'{MISSING}; python_full_version == "{image_python}"\n', launcher="toolkit")
    record = get_backend("docker", gpus=False).run(job, tmp_path / "records")
    assert record.status == "failed"
    result = record.manifest.hosts["algo-1"]
    assert result.exit_code == 1 and result.failure_written_by == "launcher"
    assert result.failure_reason.startswith("InstallRequirementsError:\nExitCode 1\n")
    assert f"No matching distribution found for {MISSING.split('==')[0]}" in result.failure_reason
    log = record.host_log("algo-1").read_text()
    assert "Looking in links: /opt/harness/wheels" in log and "imported" not in log
    assert _requirements(record)["exit_code"] == 1


# --- sagemaker-local -------------------------------------------------------------------------------


@pytest.fixture
def sdk_engine(engine: DockerClient) -> DockerClient:
    """The engine, with the SDK and compose too; skipped with the reason otherwise."""
    reason = get_backend("sagemaker-local", gpus=False).unavailable_reason()
    if reason:
        pytest.skip(reason)
    return engine


@pytest.mark.unit
def test_sagemaker_local_plan_adds_the_wheels_channel(tmp_path: Path, cache: Path) -> None:
    plan = get_backend("sagemaker-local", gpus=False).plan(_job(tmp_path, f"{PACKAGE}=={VERSION}\n"))
    config = json.loads(plan.hosts["algo-1"].files["input/config/inputdataconfig.json"])
    assert list(config)[-3:] == [sdk_installs.WHEELS_CHANNEL, "code", "sm_drivers"]
    assert plan.hosts["algo-1"].env["PIP_NO_INDEX"] == "1"
    assert "sm_train.sh" in plan.facts["requirements"]["how"]
    assert not cache.exists()


@pytest.mark.docker
@pytest.mark.sagemaker_local
@pytest.mark.slow
def test_sagemaker_local_the_sdks_driver_installs_from_the_wheelhouse(
    sdk_engine: DockerClient, torch_image: str, tmp_path: Path
) -> None:
    job = _job(tmp_path, f"{PACKAGE}=={VERSION}\n", instance_count=2)
    record = get_backend("sagemaker-local", gpus=False).run(job, tmp_path / "records")
    assert record.status == "succeeded", record.host_log("algo-1").read_text()[-3000:]
    for host in ("algo-1", "algo-2"):
        info = _requirements(record, host)
        assert info["installed"] == {PACKAGE: VERSION} and info["succeeded"] is True
        log = record.host_log(host).read_text()
        assert "install_requirements.py requirements.txt" in log  # the SDK's own sm_train.sh
        assert f"Looking in links: /opt/ml/input/data/{sdk_installs.WHEELS_CHANNEL}" in log
        assert f"imported {PACKAGE} {VERSION}" in log


@pytest.mark.docker
@pytest.mark.sagemaker_local
@pytest.mark.slow
def test_sagemaker_local_bad_requirements_fail_before_compose(
    sdk_engine: DockerClient, torch_image: str, tmp_path: Path
) -> None:
    job = _job(tmp_path, f"{MISSING}\n")
    record = get_backend("sagemaker-local", gpus=False).run(job, tmp_path / "records")
    assert record.status == "failed" and record.manifest.error is None
    result = record.manifest.hosts["algo-1"]
    assert result.exit_code == 1 and result.failure_written_by == "launcher"
    assert result.failure_reason.startswith("Training Execution failed")  # what sm_train.sh writes
    assert f"No matching distribution found for {MISSING}" in record.host_log("algo-1").read_text()
