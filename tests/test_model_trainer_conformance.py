"""The SDK v3 ``ModelTrainer`` drivers as ``sagemaker-local`` runs them, and the emulation held to them.

``launcher: model-trainer`` is emulated by harness/spec/host_contract.py (``_model_trainer_env``,
``model_trainer_cmd_args``, ``launch_command``) on the local and docker rungs; ``sagemaker-local``
runs the SDK's local mode, so the real drivers (``sm_train.sh``, ``environment.py``,
``basic_script_driver.py`` / ``torchrun_driver.py``). Three runs cover the matrix (1 and 2 hosts;
1 and 2 processes per host; no distribution and torchrun), each with hyperparameters of every
type and two channels. The entry point (tests/data/toolkit/src/dump.py, shared with
tests/test_toolkit.py) dumps what it got; what the drivers launched is compared, variable by
variable, with what harness/spec/host_contract.py builds for the same job and host *as local mode presents
them* (the platform layer that local mode writes differently, docs/sagemaker.md: its job name
with a timestamp, ``local_cpu``, the interface ``ethwe``, the harness's two probe channels, its
shorter config files). What remains is what docs/toolkit.md ("ModelTrainer drivers") accepts,
asserted exactly: an SDK release that changes its drivers fails here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from docker import DockerClient
from dumps import process_dumps

from harness.backends.sagemaker_local import SageMakerLocalBackend, SageMakerLocalOptions
from harness.backends.sagemaker_sdk import PROBE_CHANNEL, RECORD_CHANNEL
from harness.record.run_record import RunRecord
from harness.spec.host_contract import HostContract, Machine, host_contract
from harness.spec.job import Channel, JobSpec

DATA = Path(__file__).resolve().parent / "data" / "toolkit"
#: Hyperparameters of every type the job spec allows, in an order that is not sorted (the drivers
#: keep insertion order); strings with spaces and both quotes, and one that reads as JSON.
HYPERPARAMETERS: dict[str, Any] = {
    "epochs": 3,
    "learning-rate": 0.05,
    "shuffle": True,
    "verbose": False,
    "optimizer": "adam",
    "note": "two words, \"double\" and 'single' quotes",
    "spaced": "a b  c",
    "layers": [64, 32],
    "schedule": {"warmup": 10, "kind": "cosine", "nested": {"a": 1}},
    "as-string": "7",
    "x": 1,
}
#: Set by Docker or the base image in every container, whatever the launcher: not compared.
CONTAINER_NAMES = {"PATH", "HOSTNAME", "HOME", "LANG"}
#: What local mode's ``resourceconfig.json`` names: an interface the container does not have.
LOCAL_INTERFACE = "ethwe"
#: The instance type local mode gives the containers (the job's is not seen: docs/sagemaker.md).
LOCAL_INSTANCE_TYPE = "local_cpu"
#: The torch image's interpreter (``command -v python3``) and torchrun console script.
INTERPRETER = "/usr/bin/python3"
TORCHRUN = "/usr/local/bin/torchrun"
#: Variables that embed the platform's config files: compared with the file each side was given.
EMBEDDED = {"SM_RESOURCE_CONFIG": "resourceconfig.json", "SM_INPUT_DATA_CONFIG": "inputdataconfig.json"}


def _job(name: str, hosts: int, processes: int, distribution: str) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": name,
            "launcher": "model-trainer",
            "source_dir": str(DATA / "src"),
            "entry_point": "dump.py",
            "instance_count": hosts,
            "processes_per_host": processes,
            "distribution": distribution,
            "instance_type": "ml.m5.xlarge",
            "hyperparameters": HYPERPARAMETERS,
            "channels": {
                "train": {"source": str(DATA / "train"), "content_type": "text/csv"},
                "extra": {"source": str(DATA / "extra-data")},  # a hyphen fails the drivers: see below
            },
            "environment": {"MY_SETTING": "on", "NCCL_DEBUG": "INFO"},
            "max_run": 300,
        }
    )


#: 1 and 2 hosts, 1 and 2 processes per host, no distribution and torchrun, in three runs.
MATRIX = {
    "2x1-none": _job("mt-2x1-none", 2, 1, "none"),
    "1x2-torchrun": _job("mt-1x2-torchrun", 1, 2, "torchrun"),
    "2x2-torchrun": _job("mt-2x2-torchrun", 2, 2, "torchrun"),
}


def as_local_mode_presents(job: JobSpec, training_job_name: str) -> JobSpec:
    """The job with the platform facts local mode gives the drivers: the SDK's job name, its
    instance type, and the harness's probe channels after the user's (not validated: ``local_cpu``
    is no SageMaker instance type)."""
    probe = {name: Channel(source=str(DATA)) for name in (PROBE_CHANNEL, RECORD_CHANNEL)}
    return job.model_copy(
        update={
            "name": training_job_name,
            "instance_type": LOCAL_INSTANCE_TYPE,
            "channels": {**job.channels, **probe},
        }
    )


def emulated(job: JobSpec, host: str, training_job_name: str) -> HostContract:
    """What harness/spec/host_contract.py builds for ``host`` of the job as local mode presents it, on a
    machine like the container (the engine's CPUs, no GPU, local mode's interface name)."""
    machine = Machine(num_cpus=os.cpu_count() or 1, network_interface=LOCAL_INTERFACE, python="python3")
    return host_contract(as_local_mode_presents(job, training_job_name), host, machine)


def differences(
    contract: HostContract, launched: dict[str, str], container: dict[str, str], received: dict[str, Any]
) -> dict[str, tuple[str, str]]:
    """Variable by variable, (emulation, real drivers) where they differ. Not compared: what Docker
    and the image set in any container, what the rung gave the container itself (the probe's
    ``PYTHONPATH``, ...), the probe's own ``HARNESS_*``. The variables that embed a config file
    must each hold the file its side was given (local mode writes shorter files: a platform
    difference, docs/sagemaker.md); ``SM_TRAINING_ENV`` is compared field by field."""
    ours = dict(contract.env)
    theirs = dict(launched)
    for name, file in EMBEDDED.items():
        assert json.loads(theirs.pop(name)) == received[file], name
        assert json.loads(ours.pop(name)) == json.loads(contract.files[f"input/config/{file}"]), name
    ours_training, theirs_training = json.loads(ours.pop("SM_TRAINING_ENV")), json.loads(theirs.pop("SM_TRAINING_ENV"))
    for field, file in (("resource_config", "resourceconfig.json"), ("input_data_config", "inputdataconfig.json")):
        assert theirs_training.pop(field) == received[file] and ours_training.pop(field) == json.loads(
            contract.files[f"input/config/{file}"]
        )
    given = {k for k, v in container.items() if theirs.get(k) == v and k not in contract.env}
    names = (set(theirs) | set(ours)) - given - CONTAINER_NAMES
    differ = {
        name: (ours.get(name, "<unset>"), theirs.get(name, "<unset>"))
        for name in sorted(names)
        if ours.get(name) != theirs.get(name) and not name.startswith("HARNESS_")
    }
    for key in sorted(set(ours_training) | set(theirs_training)):
        if ours_training.get(key) != theirs_training.get(key):
            differ[f"SM_TRAINING_ENV.{key}"] = (
                json.dumps(ours_training.get(key, "<unset>")),
                json.dumps(theirs_training.get(key, "<unset>")),
            )
    return differ


def _accepted(interpreter: str) -> dict[str, tuple[str, str]]:
    """Where the real drivers and the emulation differ, docs/toolkit.md says why: (emulation, real).
    Only bash's own bookkeeping: ``sm_train.sh`` is a bash script that ``cd``s and runs the driver."""
    return {
        "OLDPWD": ("<unset>", "/"),  # the image's WORKDIR, where bash started
        "SHLVL": ("<unset>", "1"),
        "_": ("<unset>", interpreter),  # the command bash ran: the driver's interpreter
    }


@pytest.fixture(scope="module")
def engine(engine: DockerClient) -> DockerClient:
    """The Docker engine, with the SDK and compose too; skipped, with the reason, otherwise."""
    reason = SageMakerLocalBackend(SageMakerLocalOptions(gpus=False)).unavailable_reason()
    if reason:
        pytest.skip(reason)
    return engine


@pytest.mark.docker
@pytest.mark.sagemaker_local
@pytest.mark.slow
@pytest.mark.parametrize("case", list(MATRIX))
def test_conformance_of_the_emulation_with_the_model_trainer_drivers(
    case: str, engine: DockerClient, torch_image: str, tmp_path: Path
) -> None:
    job = MATRIX[case]
    record = SageMakerLocalBackend(SageMakerLocalOptions(gpus=False)).run(job, tmp_path)
    assert record.status == "succeeded", record.host_log(job.hosts[0]).read_text()[-3000:]
    check_record(job, record)


def check_record(job: JobSpec, record: RunRecord) -> None:
    dumps = process_dumps(record)
    torchrun = job.distribution == "torchrun"
    ranks = [str(r) for r in range(job.processes_per_host)] if torchrun else ["none"]
    assert sorted(dumps) == sorted((host, rank) for host in job.hosts for rank in ranks)
    for (host, rank), dump in sorted(dumps.items()):
        received = {
            file: record.read_json(f"hosts/{host}/received/{file}")
            for file in ("resourceconfig.json", "inputdataconfig.json")
        }
        container = record.read_json(f"hosts/{host}/received/container_env.json")
        contract = emulated(job, host, container["TRAINING_JOB_NAME"])
        # What the drivers launched: the script itself, or torchrun (the script's parent).
        env, argv = (dump["parent_env"], dump["parent_argv"]) if torchrun else (dump["env"], dump["orig_argv"])
        assert differences(contract, env, container, received) == _accepted(INTERPRETER), f"{host} {rank}"
        if torchrun:  # the kernel runs the console script as `python3 /usr/local/bin/torchrun ...`
            assert argv[:2] == [INTERPRETER, TORCHRUN] and ["torchrun", *argv[2:]] == contract.command
        else:  # the driver runs its own sys.executable (sm_train.sh's `command -v python3`); the emulation, python3
            assert argv == [INTERPRETER, *contract.command[1:]] and contract.command[0] == "python3"
        assert dump["argv"] == ["dump.py", *contract.command[contract.command.index("dump.py") + 1 :]]
        assert dump["cwd"] == str(contract.cwd) == "/opt/ml/input/data/code"
        # the script's directory, then the probe's channel (the rung's PYTHONPATH), then the interpreter's
        assert dump["sys_path"][:2] == ["/opt/ml/input/data/code", f"/opt/ml/input/data/{PROBE_CHANNEL}"]
        # torchrun's own variables: the same flags, so the same values; neither driver sets them otherwise
        node, world = job.hosts.index(host), job.world_size
        rank_env = {k: dump["env"].get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
        expected = (
            {"RANK": str(node * job.processes_per_host + int(rank)), "LOCAL_RANK": rank, "WORLD_SIZE": str(world)}
            if torchrun
            else {"RANK": None, "LOCAL_RANK": None, "WORLD_SIZE": None}
        )
        assert rank_env == expected
        if not torchrun:  # MASTER_* only from torchrun (the drivers set SM_MASTER_*)
            assert "MASTER_ADDR" not in dump["env"] and "MASTER_PORT" not in dump["env"]
        # every channel whole (local mode copies none in shares), the harness's and ModelTrainer's too
        assert dump["channel_files"]["train"] == [f"part-{i}.csv" for i in range(4)]
        assert dump["channel_files"]["extra"] == ["note.txt"]
        assert dump["channel_files"]["code"] == ["dump.py", "fail.py"]


@pytest.mark.unit
def test_emulation_reads_values_back_as_bash_sources_them_and_sets_efa() -> None:
    """Found by the conformance run: ``sm_training.env`` is ``export K='<value>'`` lines, so a
    single quote pair around a plain word disappears; from the driver's source: torchrun on EFA
    instance types gets the EFA variables, the entry point's ``PWD`` is the code channel."""
    machine = Machine(num_cpus=2, python="python3")
    contract = host_contract(
        MATRIX["2x2-torchrun"].model_copy(update={"instance_type": "ml.p4d.24xlarge"}), "algo-2", machine
    )
    assert contract.env["SM_HP_NOTE"] == 'two words, "double" and single quotes'
    assert json.loads(contract.env["SM_HPS"])["note"] == 'two words, "double" and single quotes'
    assert contract.command[contract.command.index("--note") + 1] == 'two words, "double" and single quotes'
    # kept where bash would split, expand or fail (the drivers' job fails: docs/toolkit.md)
    odd = MATRIX["2x1-none"].model_copy(update={"hyperparameters": {"a": "it's", "b": "'x y'z'"}})
    assert host_contract(odd, "algo-1", machine).env["SM_HP_A"] == "it's"
    assert host_contract(odd, "algo-1", machine).env["SM_HP_B"] == "'x y'z'"
    assert {k: contract.env[k] for k in ("FI_PROVIDER", "FI_EFA_USE_DEVICE_RDMA", "RDMAV_FORK_SAFE")} == {
        "FI_PROVIDER": "efa",
        "FI_EFA_USE_DEVICE_RDMA": "1",
        "RDMAV_FORK_SAFE": "1",
    }
    gb200 = MATRIX["2x2-torchrun"].model_copy(update={"instance_type": "ml.p6e-gb200.36xlarge"})
    assert "FI_PROVIDER" not in host_contract(gb200, "algo-1", machine).env  # not in the v3 driver's list
    assert "FI_PROVIDER" not in host_contract(MATRIX["2x1-none"], "algo-1", machine).env  # torchrun only
    assert contract.env["PWD"] == str(contract.cwd) == "/opt/ml/input/data/code"


@pytest.mark.docker
@pytest.mark.sagemaker_local
@pytest.mark.slow
def test_a_channel_name_with_a_hyphen_fails_the_drivers(engine: DockerClient, torch_image: str, tmp_path: Path) -> None:
    """``export SM_CHANNEL_EXTRA-DATA=...`` is no valid bash: ``source`` fails under ``set -e`` and
    ``sm_train.sh`` fails the job before the entry point starts. The emulation gives the variable
    (docs/toolkit.md), so the job spec refuses such a job up front (tests/test_bad_input.py);
    ``model_copy`` skips that check here to show what the drivers do with it."""
    job = MATRIX["2x1-none"].model_copy(
        update={
            "name": "mt-hyphen",
            "instance_count": 1,
            "channels": {"extra-data": Channel(source=str(DATA / "extra-data"))},
        }
    )
    assert (
        host_contract(job, "algo-1", Machine(num_cpus=1)).env["SM_CHANNEL_EXTRA-DATA"]
        == "/opt/ml/input/data/extra-data"
    )
    record = SageMakerLocalBackend(SageMakerLocalOptions(gpus=False)).run(job, tmp_path)
    assert record.status == "failed" and record.manifest.hosts["algo-1"].exit_code == 1
    log = record.host_log("algo-1").read_text()
    assert "export: `SM_CHANNEL_EXTRA-DATA=/opt/ml/input/data/extra-data': not a valid identifier" in log
    # the rung packs /opt/ml/output/data whatever the job did: the archive is there, and holds no
    # dump, since the entry point never started
    assert (record.root / "artifacts" / "output.tar.gz").is_file()
    assert process_dumps(record) == {}
