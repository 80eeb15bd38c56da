"""The real SageMaker training toolkit on the docker rung, and the emulation held to it.

The conformance matrix runs one job per combination that changes what the toolkit does (1 or 2
hosts; 1 or several processes per host; no distribution or torchrun; an instance type with and
without EFA), each with hyperparameters of every type and three channels (one sharded), through
the real toolkit in the toolkit image. The entry point (tests/data/toolkit/src/dump.py) dumps what
it got; what the toolkit launched is compared with what harness/spec/host_contract.py builds for the same
job and host. The differences that remain are the ones docs/toolkit.md accepts, asserted exactly:
a toolkit release that changes behaviour fails here.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from dumps import process_dumps

from harness.backends import get_backend, toolkit
from harness.backends.docker import PROBE_MOUNT
from harness.runtime import images
from harness.spec.host_contract import Machine, host_contract
from harness.spec.job import JobSpec

DATA = Path(__file__).resolve().parent / "data" / "toolkit"
VERSIONS = "sagemaker-training 5.1.4, sagemaker-pytorch-training 3.0.0"
#: Hyperparameters of every type the job spec allows, strings with spaces and both quotes.
HYPERPARAMETERS: dict[str, Any] = {
    "epochs": 3,
    "learning-rate": 0.05,
    "shuffle": True,
    "verbose": False,
    "optimizer": "adam",
    "note": "two words, \"double\" and 'single' quotes",
    "layers": [64, 32],
    "schedule": {"warmup": 10, "kind": "cosine", "nested": {"a": 1}},
    "x": 1,
}
#: Set by Docker or the base image in every container, whatever the launcher: not compared.
CONTAINER_NAMES = {"PATH", "HOSTNAME", "HOME", "LANG"}
#: The directory pip puts the toolkit's ``train`` console script in (its sys.path[0]).
TRAIN_DIR = "/usr/local/bin"
INTERPRETER = "/usr/bin/python3"


def _job(name: str, hosts: int, processes: int, distribution: str, instance_type: str) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": name,
            "source_dir": str(DATA / "src"),
            "entry_point": "dump.py",
            "instance_count": hosts,
            "processes_per_host": processes,
            "distribution": distribution,
            "instance_type": instance_type,
            "hyperparameters": HYPERPARAMETERS,
            "channels": {
                "train": {"source": str(DATA / "train"), "distribution": "ShardedByS3Key", "content_type": "text/csv"},
                "eval": {"source": str(DATA / "eval")},
                "extra-data": {"source": str(DATA / "extra-data")},
            },
            "environment": {"MY_SETTING": "on", "NCCL_DEBUG": "INFO"},
            "max_run": 300,
        }
    )


MATRIX = {
    "1x1-none": _job("tk-1x1-none", 1, 1, "none", "ml.m5.xlarge"),
    "2x1-none": _job("tk-2x1-none", 2, 1, "none", "ml.c5.xlarge"),
    "1x2-torchrun": _job("tk-1x2-torchrun", 1, 2, "torchrun", "ml.g5.48xlarge"),  # EFA, without RDMA
    "2x2-torchrun": _job("tk-2x2-torchrun", 2, 2, "torchrun", "ml.p4d.24xlarge"),  # EFA with RDMA
}


# --- without an engine -----------------------------------------------------------------------------


@pytest.mark.unit
def test_emulation_asks_the_toolkit_for_the_processes_per_host_and_sets_efa() -> None:
    """Found by the conformance run: without the framework parameter the toolkit starts one
    process per GPU (one on CPU); torchrun on EFA instance types gets the EFA variables."""
    machine = Machine(num_cpus=4, network_interface="eth0", python="python3")
    contract = host_contract(MATRIX["2x2-torchrun"], "algo-2", machine)
    hps = json.loads(contract.files["input/config/hyperparameters.json"])
    assert hps["sagemaker_mpi_num_of_processes_per_host"] == "2"
    assert json.loads(contract.env["SM_FRAMEWORK_PARAMS"])["sagemaker_mpi_num_of_processes_per_host"] == 2
    assert contract.command[:5] == ["torchrun", "--nnodes", "2", "--nproc_per_node", "2"]
    assert {k: contract.env[k] for k in ("FI_PROVIDER", "FI_EFA_USE_DEVICE_RDMA", "RDMAV_FORK_SAFE")} == {
        "FI_PROVIDER": "efa",
        "FI_EFA_USE_DEVICE_RDMA": "1",
        "RDMAV_FORK_SAFE": "1",
    }
    g5 = host_contract(MATRIX["1x2-torchrun"], "algo-1", machine).env
    assert g5["FI_PROVIDER"] == "efa" and "FI_EFA_USE_DEVICE_RDMA" not in g5
    plain = host_contract(MATRIX["1x1-none"], "algo-1", machine)
    assert (
        "FI_PROVIDER" not in plain.env
        and "sagemaker_mpi_num_of_processes_per_host" not in plain.files["input/config/hyperparameters.json"]
    )
    assert plain.command[:3] == ["python3", "--", "dump.py"]  # TK process.py: the script after '--'
    assert plain.env["SAGEMAKER_TRAINING_MODULE"] == "sagemaker_pytorch_container.training:main"


@pytest.mark.unit
def test_hand_over_gives_the_platform_layer_and_train() -> None:
    machine = Machine(num_cpus=4, network_interface="eth0", python="python3")
    contracts = {h: host_contract(MATRIX["2x1-none"], h, machine) for h in ("algo-1", "algo-2")}
    given = toolkit.hand_over(contracts, VERSIONS)
    for host, contract in given.items():
        assert contract.command == ["train"] and contract.launcher_env == {}
        assert contract.env == contracts[host].platform_env == {"TRAINING_JOB_NAME": "tk-2x1-none", **_user_env()}
        assert contract.files == contracts[host].files and contract.cwd == PurePosixPath("/opt/ml/code")
        assert contract.facts["toolkit"] == VERSIONS


def _user_env() -> dict[str, str]:
    return {"MY_SETTING": "on", "NCCL_DEBUG": "INFO"}


@pytest.mark.unit
def test_launched_argv_names_a_console_script_as_the_toolkit_ran_it() -> None:
    script = {
        "argv": [INTERPRETER, "dump.py", "--x", "1"],
        "orig_argv": [INTERPRETER, "--", "dump.py", "--x", "1"],
    }
    assert toolkit.launched_argv(script) == [INTERPRETER, "--", "dump.py", "--x", "1"]
    torchrun = {
        "argv": [INTERPRETER, "/usr/local/bin/torchrun", "--nnodes", "1"],
        "orig_argv": [INTERPRETER, "/usr/local/bin/torchrun", "--nnodes", "1"],
    }
    assert toolkit.launched_argv(torchrun) == ["torchrun", "--nnodes", "1"]


class _Images:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def get(self, image: str) -> Any:
        return type("Image", (), {"attrs": {"Config": self.config}})()


class _Containers:
    def __init__(self, out: bytes) -> None:
        self.out, self.calls = out, 0

    def run(self, image: str, **kwargs: Any) -> bytes:
        self.calls += 1
        assert kwargs["network_mode"] == "none" and kwargs["remove"] is True
        return self.out


class _Client:
    def __init__(self, config: dict[str, Any], out: bytes = b"{}") -> None:
        self.images, self.containers = _Images(config), _Containers(out)


@pytest.mark.unit
def test_found_in_image_by_label_by_the_dlc_variable_or_not_at_all() -> None:
    labelled = _Client({"Labels": {images.TOOLKIT_LABEL: VERSIONS}})
    assert toolkit.found_in_image(labelled, "img", {}) == VERSIONS and labelled.containers.calls == 0
    versions = json.dumps({"sagemaker-training": "5.0.0", "sagemaker-pytorch-training": "2.8.1"}).encode()
    dlc = _Client({"Env": ["PATH=/bin", f"SAGEMAKER_TRAINING_MODULE={images.TOOLKIT_MODULE}"]}, versions)
    assert toolkit.found_in_image(dlc, "img", {}) == "sagemaker-training 5.0.0, sagemaker-pytorch-training 2.8.1"
    plain = _Client({"Env": ["PATH=/bin"], "Labels": None})
    assert toolkit.found_in_image(plain, "img", {}) is None and plain.containers.calls == 0
    broken = _Client({"Env": ["SAGEMAKER_TRAINING_MODULE=x:y"]}, b"{}")
    assert toolkit.found_in_image(broken, "img", {}) is None


@pytest.mark.unit
def test_docker_plan_runs_the_toolkit_by_default_and_another_image_decides_for_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = MATRIX["1x1-none"]
    monkeypatch.setattr(images, "toolkit_build_blocker", lambda client: None)
    assert get_backend("docker", gpus=False).plan(job).facts["toolkit"].startswith(VERSIONS)
    monkeypatch.setattr(images, "toolkit_build_blocker", lambda client: "no gcc here")
    assert get_backend("docker", gpus=False).plan(job).facts["toolkit"] == f"{toolkit.EMULATED}: no gcc here"
    assert get_backend("docker", gpus=False, image="harness/toolkit").plan(job).facts["toolkit"].startswith(VERSIONS)
    assert get_backend("docker", gpus=False, image="mine:1").plan(job).facts["toolkit"].startswith(toolkit.EMULATED)


@pytest.mark.unit
def test_a_machine_that_cannot_build_the_toolkit_runs_the_emulation_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[str] = []
    monkeypatch.setattr(images, "ensure_torch_image", lambda client: built.append("torch") or "harness/torch:1")
    monkeypatch.setattr(images, "ensure_toolkit_image", lambda client: built.append("toolkit") or "harness/toolkit:1")
    job = MATRIX["1x1-none"]
    monkeypatch.setattr(images, "toolkit_build_blocker", lambda client: "no gcc here")
    assert toolkit.image_for(None, job, None) == ("harness/torch:1", "no gcc here")
    monkeypatch.setattr(images, "toolkit_build_blocker", lambda client: None)
    assert toolkit.image_for(None, job, None) == ("harness/toolkit:1", None)

    def fails(client: Any) -> str:
        raise images.ImageError("pip wheel failed", hint="look at pip's output")

    monkeypatch.setattr(images, "ensure_toolkit_image", fails)
    assert toolkit.image_for(None, job, None) == ("harness/torch:1", "pip wheel failed")
    with pytest.raises(images.ImageError):  # named explicitly, the toolkit image's failure is the run's
        toolkit.image_for(None, job, "harness/toolkit")
    assert built == ["torch", "toolkit", "torch"]


@pytest.mark.unit
def test_the_toolkit_build_blocker_names_what_this_machine_lacks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class Missing:
        def get(self, name: str) -> Any:
            raise images.ImageNotFound(name)

    engine = type("Engine", (), {"images": Missing()})()
    monkeypatch.setattr(images, "_IMAGE_PYTHON", "2.7")
    assert "Python 2.7" in str(images.toolkit_build_blocker(engine))
    monkeypatch.setattr(images, "_IMAGE_PYTHON", "{}.{}".format(*sys.version_info[:2]))
    monkeypatch.setattr(images.shutil, "which", lambda name: None)
    assert "gcc" in str(images.toolkit_build_blocker(engine))
    monkeypatch.setattr(images.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(images.sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    assert "headers" in str(images.toolkit_build_blocker(engine))
    labelled = type("Engine", (), {"images": _Images({})})()
    labelled.images.get = lambda name: type("Image", (), {"labels": {images.TOOLKIT_LABEL: VERSIONS}})()
    assert images.toolkit_build_blocker(labelled) is None  # built already: no headers needed
    assert "headers" in str(images.toolkit_build_blocker(None))  # no engine to ask
    (tmp_path / "Python.h").touch()
    assert images.toolkit_build_blocker(engine) is None


# --- the real toolkit ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toolkit_image(engine: Any) -> str:
    tag = images.ensure_toolkit_image(engine)
    assert engine.images.get(tag).labels[images.TOOLKIT_LABEL] == VERSIONS
    assert engine.images.get(f"{images.TOOLKIT_IMAGE}:latest").id == engine.images.get(tag).id
    return tag


@pytest.fixture(scope="module")
def image_python(engine: Any, toolkit_image: str) -> dict[str, Any]:
    """The image's interpreter's own sys.path (isolated: no script directory, no PYTHONPATH), and
    its torch version (read without importing torch)."""
    code = (
        "import json, sys, importlib.metadata as m; print(json.dumps({'path': sys.path, 'torch': m.version('torch')}))"
    )
    out = engine.containers.run(
        toolkit_image, entrypoint=["python3", "-I", "-c", code], remove=True, labels={"harness.managed": "true"}
    )
    return dict(json.loads(bytes(out).decode().strip().splitlines()[-1]))


def _accepted(python: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The variables in which the real toolkit and the emulation differ, docs/toolkit.md says why:
    (emulation, real toolkit)."""
    interpreter_path = ":".join(["/opt/ml/code", TRAIN_DIR, PROBE_MOUNT, *python["path"]])
    return {
        "PYTHONPATH": ("/opt/ml/code", interpreter_path),
        "SM_DLC_TORCH_VERSION": ("<unset>", python["torch"]),
    }


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("case", list(MATRIX))
def test_conformance_of_the_emulation_with_the_real_toolkit(
    case: str, toolkit_image: str, image_python: dict[str, Any], tmp_path: Path
) -> None:
    job = MATRIX[case]
    backend = get_backend("docker", gpus=False, image=toolkit_image)
    record = backend.run(job, tmp_path)
    assert record.status == "succeeded", record.host_log(job.hosts[0]).read_text()[-3000:]
    assert record.manifest.rung_facts["toolkit"] == VERSIONS
    emulated = get_backend("docker", gpus=False).plan(job).hosts  # what the emulated path would give
    dumps = process_dumps(record)
    torchrun = job.distribution == "torchrun"
    ranks = [str(r) for r in range(job.processes_per_host)] if torchrun else ["none"]
    assert sorted(dumps) == sorted((host, rank) for host in job.hosts for rank in ranks)
    for (host, rank), dump in sorted(dumps.items()):
        contract = emulated[host]
        container = record.read_json(f"hosts/{host}/received/container_env.json")
        # What the toolkit launched: the script itself, or torchrun (the script's parent).
        env, argv = (dump["parent_env"], dump["parent_argv"]) if torchrun else (dump["env"], dump["orig_argv"])
        given = {k for k, v in container.items() if env.get(k) == v and k not in contract.env}
        names = (set(env) | set(contract.env)) - given - CONTAINER_NAMES
        differ = {
            name: (contract.env.get(name, "<unset>"), env.get(name, "<unset>"))
            for name in sorted(names)
            if contract.env.get(name) != env.get(name)
        }
        assert differ == _accepted(image_python), f"{case} {host} {rank}"
        if torchrun:  # the kernel runs the console script as `python3 /usr/local/bin/torchrun ...`
            assert argv[:2] == [INTERPRETER, f"{TRAIN_DIR}/torchrun"] and ["torchrun", *argv[2:]] == contract.command
        else:  # the toolkit runs its own sys.executable; the emulation, the rung's python3
            assert argv[0] == INTERPRETER and argv[1:] == contract.command[1:]
            # the script's directory, then PYTHONPATH: so the toolkit's `train` directory is on it
            assert dump["sys_path"] == ["/opt/ml/code", *_accepted(image_python)["PYTHONPATH"][1].split(":")]
        assert dump["cwd"] == str(contract.cwd) == "/opt/ml/code"
        assert dump["argv"] == ["dump.py", *contract.command[contract.command.index("dump.py") + 1 :]]
        assert dump["hostname"] == host
        # torchrun's own variables, the same under either launcher: its flags are the same.
        node, world = job.hosts.index(host), job.world_size
        rank_env = {k: dump["env"].get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
        expected = (
            {"RANK": str(node * job.processes_per_host + int(rank)), "LOCAL_RANK": rank, "WORLD_SIZE": str(world)}
            if torchrun
            else {"RANK": None, "LOCAL_RANK": None, "WORLD_SIZE": None}  # neither toolkit sets them
        )
        assert rank_env == expected
        # The platform's share of a sharded channel, the replicated ones whole.
        assert dump["channel_files"] == {
            "eval": ["eval.csv"],
            "extra-data": ["note.txt"],
            "train": [f"part-{i}.csv" for i in range(4)][node :: len(job.hosts)],
        }
        # The record says what the toolkit launched (received/), beside what the rung gave.
        launched = record.read_json(f"hosts/{host}/received/command.json")
        assert launched["argv"] == (contract.command if torchrun else [INTERPRETER, *contract.command[1:]])
        assert launched["cwd"] == "/opt/ml/code"
        assert record.read_json(f"hosts/{host}/received/container_command.json")["argv"] == ["train"]
        assert record.read_json(f"hosts/{host}/received/env.json")["SM_CURRENT_HOST"] == host
        assert "SM_CURRENT_HOST" not in container and container["TRAINING_JOB_NAME"] == job.name


@pytest.mark.docker
@pytest.mark.slow
def test_a_failed_script_gets_the_same_failure_reason(toolkit_image: str, torch_image: str, tmp_path: Path) -> None:
    """The failure file the toolkit writes and the one the emulated path writes in its place:
    the same but for the interpreter in the command (the toolkit's own, absolute)."""
    job = MATRIX["1x1-none"].model_copy(update={"name": "tk-fail", "entry_point": "fail.py"})
    real = get_backend("docker", gpus=False, image=toolkit_image).run(job, tmp_path)
    emulated = get_backend("docker", gpus=False, image=torch_image).run(job, tmp_path)
    assert real.manifest.rung_facts["toolkit"] == VERSIONS
    assert emulated.manifest.rung_facts["toolkit"] == toolkit.EMULATED
    ours, theirs = emulated.manifest.hosts["algo-1"], real.manifest.hosts["algo-1"]
    assert real.status == emulated.status == "failed" and theirs.exit_code == ours.exit_code == 1
    command = host_contract(job, "algo-1", Machine(num_cpus=1, python="python3")).command
    assert ours.failure_reason == (
        'ExecuteUserScriptError:\nExitCode 1\nErrorMessage "raise ValueError("bad shape: (3, 4)")\n'
        f' ValueError: bad shape: (3, 4)"\nCommand "{" ".join(command)}"'
    )
    # The toolkit splits what it read at the pipe's chunk boundaries (process.watch reads 4 KiB or
    # less, whatever is there), and Python writes a traceback's last line in pieces ("ValueError",
    # ": ", the message): under load its ErrorMessage has those pieces on lines of their own.
    expected = ours.failure_reason.replace('Command "python3 ', f'Command "{INTERPRETER} ')
    assert _unchunked(theirs.failure_reason) == _unchunked(expected)
    # The toolkit's file is found in /opt/ml/output like one the job wrote: the rung cannot tell them apart.
    assert (ours.failure_written_by, theirs.failure_written_by) == ("launcher", "job")


def _unchunked(message: str) -> str:
    """A failure message with the toolkit's chunk-dependent separators (blank pieces, a line
    break or ': ' between the pieces of one line) folded to one space."""
    return re.sub(r"[\s:]+", " ", message)
