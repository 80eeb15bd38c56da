"""The contract per launcher flavour, checked against the facts cited in harness/spec/host_contract.py."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import pytest

from harness.spec.host_contract import Machine, host_contract
from harness.spec.job import JobSpec

pytestmark = pytest.mark.unit

MACHINE = Machine(num_cpus=8, num_gpus=0, network_interface="eth0", python="python3")


def _job(tmp_path: Path, **overrides: object) -> JobSpec:
    (tmp_path / "train.py").write_text("")
    fields: dict[str, object] = {
        "name": "demo",
        "source_dir": tmp_path,
        "entry_point": "train.py",
        "instance_count": 2,
        "processes_per_host": 2,
        "distribution": "torchrun",
        "hyperparameters": {"learning-rate": 0.1, "shuffle": False, "optim": "adam", "b": 3},
        "channels": {"train": {"source": str(tmp_path), "content_type": "text/csv"}},
    }
    return JobSpec.model_validate({**fields, **overrides})


def test_toolkit_flavour(tmp_path: Path) -> None:
    contract = host_contract(_job(tmp_path), "algo-2", MACHINE)
    env = contract.env
    hps = json.loads(contract.files["input/config/hyperparameters.json"])
    assert hps["optim"] == '"adam"' and hps["shuffle"] == "false"  # SDK v2 json.dumps every value
    assert hps["sagemaker_program"] == '"train.py"'
    assert env["SM_HP_LEARNING-RATE"] == "0.1"  # hyphen kept
    assert env["SM_HP_SHUFFLE"] == "false"
    assert json.loads(env["SM_USER_ARGS"]) == [
        "-b",
        "3",
        "--learning-rate",
        "0.1",
        "--optim",
        "adam",
        "--shuffle",
        "False",
    ]
    assert contract.command == [
        "torchrun",
        "--nnodes",
        "2",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "algo-1",
        "--master_port",
        "7777",
        "--node_rank",
        "1",
        "train.py",
        "-b",
        "3",
        "--learning-rate",
        "0.1",
        "--optim",
        "adam",
        "--shuffle",
        "False",
    ]
    assert contract.cwd == PurePosixPath("/opt/ml/code")
    assert env["MASTER_ADDR"] == "algo-1" and env["NCCL_SOCKET_IFNAME"] == "eth0"
    assert env["SM_HOSTS"] == '["algo-1","algo-2"]'  # compact JSON
    assert json.loads(env["SM_TRAINING_ENV"])["is_master"] is False
    assert env["SM_CHANNEL_TRAIN"] == "/opt/ml/input/data/train"
    assert "RANK" not in env and "WORLD_SIZE" not in env  # only torchrun sets them


def test_model_trainer_flavour(tmp_path: Path) -> None:
    contract = host_contract(_job(tmp_path, launcher="model-trainer"), "algo-1", MACHINE)
    env = contract.env
    hps = json.loads(contract.files["input/config/hyperparameters.json"])
    assert hps == {"learning-rate": "0.1", "shuffle": "false", "optim": "adam", "b": "3"}  # safe_serialize
    assert env["SM_HP_LEARNING_RATE"] == "0.1"  # hyphen turned into underscore
    assert "SM_USER_ARGS" not in env and "MASTER_ADDR" not in env
    assert env["SM_MASTER_ADDR"] == "algo-1" and env["SM_CURRENT_HOST_RANK"] == "0"
    assert json.loads(env["SM_CHANNELS"]) == ["train", "code", "sm_drivers"]
    assert contract.command == [
        "torchrun",
        "--nnodes=2",
        "--nproc_per_node=2",
        "--master_addr=algo-1",
        "--master_port=7777",
        "--node_rank=0",
        "train.py",
        "--learning-rate",
        "0.1",
        "--shuffle",
        "false",
        "--optim",
        "adam",
        "--b",
        "3",
    ]
    assert contract.cwd == PurePosixPath("/opt/ml/input/data/code")


@pytest.mark.parametrize("launcher", ["toolkit", "model-trainer"])
def test_single_host_has_no_multi_node_flags(tmp_path: Path, launcher: str) -> None:
    contract = host_contract(_job(tmp_path, instance_count=1, launcher=launcher), "algo-1", MACHINE)
    assert not any("master_addr" in token for token in contract.command)


def test_resource_config_and_paths_follow_the_root(tmp_path: Path) -> None:
    root = PurePosixPath("/tmp/x/opt_ml")
    contract = host_contract(_job(tmp_path), "algo-1", MACHINE, root)
    config = json.loads(contract.files["input/config/resourceconfig.json"])
    assert config["hosts"] == ["algo-1", "algo-2"] and config["current_host"] == "algo-1"
    assert config["network_interface_name"] == "eth0"
    assert contract.env["SM_MODEL_DIR"] == "/tmp/x/opt_ml/model"
    data_config = json.loads(contract.files["input/config/inputdataconfig.json"])
    assert data_config["train"]["ContentType"] == "text/csv"
