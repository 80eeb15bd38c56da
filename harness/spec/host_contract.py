"""The SageMaker training contract: what one host of one job receives.

Every rung the harness runs itself builds its hosts from this module, so that a difference between
rungs is a difference in *where* the job ran, never in *what* it was given. Two layers are kept
apart because they differ between SageMaker setups and break jobs in different ways:

* **Platform** (:func:`platform_files`, :func:`platform_env`): what the SageMaker service gives
  every container before it starts: the ``/opt/ml/input/config`` files, the channel
  directories, ``TRAINING_JOB_NAME`` and the job's ``Environment`` map. Source: the AWS developer
  guide, "How Amazon SageMaker AI Runs Your Training Image" and "Output" pages.
* **Launcher** (:func:`launcher_env`, :func:`launch_command`): what the program inside the
  container adds: the ``SM_*`` variables, ``MASTER_ADDR``, ``NCCL_*`` and the command line. Two
  flavours exist and are chosen per job (:data:`harness.spec.job.Launcher`):

  - ``toolkit``: aws/sagemaker-training-toolkit (``environment.py``, ``mapping.py``,
    ``torch_distributed.py``) with aws/sagemaker-pytorch-training-toolkit (``training.py``),
    as in the PyTorch deep learning containers. Hyperparameters arrive JSON-encoded (SDK v2
    ``Framework.hyperparameters()``); the command line is sorted with booleans as ``True``.
    Checked against the real sagemaker-training 5.1.4 and sagemaker-pytorch-training 3.0.0 by
    tests/test_toolkit.py, which the docker rung runs where the image has them (harness/backends/toolkit.py;
    docs/toolkit.md lists the differences that remain, and why).
  - ``model-trainer``: the SDK v3 ``ModelTrainer`` drivers (``container_drivers/scripts/
    environment.py``, ``common/utils.py``, ``distributed_drivers/torchrun_driver.py``): strings
    unquoted (``safe_serialize``), arguments in insertion order with booleans as ``true``,
    ``SM_HP_*`` keys with hyphens turned into underscores, no ``SM_USER_ARGS``.

Paths are computed for a given ``/opt/ml`` root so that a rung that cannot mount ``/opt/ml``
still hands the job consistent paths; the run record says which root was used.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from harness.spec.job import HyperparameterValue, JobSpec

OPT_ML = PurePosixPath("/opt/ml")
#: ``MASTER_PORT`` both launchers use (PyTorch toolkit ``training.py``; v3 ``environment.py``).
MASTER_PORT = 7777
#: Hyperparameters SDK v2 framework estimators add for the toolkit (``estimator.py``).
_TOOLKIT_RESERVED = (
    "sagemaker_program",
    "sagemaker_submit_directory",
    "sagemaker_container_log_level",
    "sagemaker_job_name",
    "sagemaker_region",
)
#: Instance types whose torchrun gets ``FI_PROVIDER=efa`` / the RDMA variables from the toolkit
#: (TK ``__init__.py`` ``SM_EFA_NCCL_INSTANCES``, ``SM_EFA_RDMA_INSTANCES``; ``torch_distributed.py``).
_EFA_NCCL_INSTANCES = frozenset(
    (
        "ml.g4dn.8xlarge",
        "ml.g4dn.12xlarge",
        "ml.g5.48xlarge",
        "ml.p3dn.24xlarge",
        "ml.p4d.24xlarge",
        "ml.p4de.24xlarge",
        "ml.p5.48xlarge",
        "ml.p5e.48xlarge",
        "ml.trn1.32xlarge",
        "ml.p6e-gb200.36xlarge",
    )
)
_EFA_RDMA_INSTANCES = frozenset(
    (
        "ml.p4d.24xlarge",
        "ml.p4de.24xlarge",
        "ml.p5.48xlarge",
        "ml.p5e.48xlarge",
        "ml.trn1.32xlarge",
        "ml.p6e-gb200.36xlarge",
    )
)
#: GPUs per instance of the SageMaker training instance types that have several (AWS, "Amazon
#: SageMaker pricing" and the EC2 accelerated-computing instance pages): what a job on one of them
#: is offered, whatever GPUs the machine that emulates it has.
GPUS_PER_INSTANCE = {
    "ml.p3.8xlarge": 4,
    "ml.p3.16xlarge": 8,
    "ml.p3dn.24xlarge": 8,
    "ml.p4d.24xlarge": 8,
    "ml.p4de.24xlarge": 8,
    "ml.p5.48xlarge": 8,
    "ml.p5e.48xlarge": 8,
    "ml.g4dn.12xlarge": 4,
    "ml.g5.12xlarge": 4,
    "ml.g5.24xlarge": 4,
    "ml.g5.48xlarge": 8,
    "ml.g6.12xlarge": 4,
    "ml.g6.24xlarge": 4,
    "ml.g6.48xlarge": 8,
    "ml.g6e.12xlarge": 4,
    "ml.g6e.24xlarge": 4,
    "ml.g6e.48xlarge": 8,
}
#: What the PyTorch DLCs set in their image (``ENV SAGEMAKER_TRAINING_MODULE=...``, every
#: pytorch/training Dockerfile) so that ``train`` hands over to the PyTorch toolkit; the entry
#: point inherits it.
TOOLKIT_FRAMEWORK_MODULE = "sagemaker_pytorch_container.training:main"
#: Reserved ``sagemaker_*`` keys the toolkit keeps out of ``SM_FRAMEWORK_PARAMS`` (``params.py``).
_TOOLKIT_NOT_FRAMEWORK = {
    "sagemaker_program",
    "sagemaker_submit_directory",
    "sagemaker_enable_cloudwatch_metrics",
    "sagemaker_region",
    "sagemaker_container_log_level",
    "sagemaker_job_name",
    "sagemaker_default_user_module_name",
    "_tuning_objective_metric",
    "sagemaker_s3_output",
}


@dataclass(frozen=True)
class Machine:
    """Facts about the machine a host runs on that the launcher reads at start."""

    num_cpus: int
    num_gpus: int = 0
    network_interface: str = "eth0"
    python: str = "python3"
    torchrun: str = "torchrun"


@dataclass(frozen=True)
class HostContract:
    """Everything one host of one job receives; rungs materialise it and record it verbatim."""

    host: str
    opt_ml: PurePosixPath
    files: dict[str, str]
    platform_env: dict[str, str]
    launcher_env: dict[str, str]
    command: list[str]
    cwd: PurePosixPath
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**self.platform_env, **self.launcher_env}


def host_contract(job: JobSpec, host: str, machine: Machine, opt_ml: PurePosixPath = OPT_ML) -> HostContract:
    """The platform and launcher layers for ``host``, with ``/opt/ml`` at ``opt_ml``."""
    return HostContract(
        host=host,
        opt_ml=opt_ml,
        files=platform_files(job, host, machine),
        platform_env=platform_env(job),
        launcher_env=launcher_env(job, host, machine, opt_ml),
        command=launch_command(job, host, machine),
        cwd=code_dir(job, opt_ml),
        facts={"launcher": job.launcher, "opt_ml": str(opt_ml)},
    )


# --- platform layer ------------------------------------------------------------------------------


def serialized_hyperparameters(job: JobSpec) -> dict[str, str]:
    """The ``HyperParameters`` string map the SDK of this launcher flavour sends to the service.

    SDK v2 framework estimators ``json.dumps`` every value and add the ``sagemaker_*`` keys the
    toolkit needs; SDK v3 ``safe_serialize`` leaves strings as they are and JSON-encodes the rest.
    """
    if job.launcher == "model-trainer":
        return {key: _safe_serialize(value) for key, value in job.hyperparameters.items()}
    encoded = {key: json.dumps(value) for key, value in job.hyperparameters.items()}
    if job.is_script_mode:
        encoded.update(
            {
                "sagemaker_program": json.dumps(job.entry_point),
                "sagemaker_submit_directory": json.dumps(str(OPT_ML / "code")),
                "sagemaker_container_log_level": "20",
                "sagemaker_job_name": json.dumps(job.name),
                "sagemaker_region": json.dumps("us-east-1"),
            }
        )
    if job.distribution == "torchrun":
        encoded["sagemaker_torch_distributed_enabled"] = "true"
        encoded["sagemaker_instance_type"] = json.dumps(job.instance_type)
        # The toolkit starts one process per GPU (1 on CPU) unless this framework parameter says
        # how many (TK runner.py ``_mpi_param_value``, for every runner type); SDK v2's
        # ``torch_distributed`` sends none, so a job that asks for P per host sends it as a
        # hyperparameter (how request.py reads it back). Verified against sagemaker-training 5.1.4.
        encoded["sagemaker_mpi_num_of_processes_per_host"] = json.dumps(job.processes_per_host)
    return encoded


def _safe_serialize(value: HyperparameterValue) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def resource_config(job: JobSpec, host: str, machine: Machine) -> dict[str, Any]:
    """``resourceconfig.json`` as the service writes it (fields seen in real job logs)."""
    return {
        "current_host": host,
        "current_instance_type": job.instance_type,
        "current_group_name": "homogeneousCluster",
        "hosts": job.hosts,
        "instance_groups": [
            {
                "instance_group_name": "homogeneousCluster",
                "instance_type": job.instance_type,
                "hosts": job.hosts,
            }
        ],
        "network_interface_name": machine.network_interface,
    }


def input_data_config(job: JobSpec) -> dict[str, Any]:
    """``inputdataconfig.json``: one entry per channel, as ``InputDataConfig`` describes it."""
    config = {}
    for name, channel in job.channels.items():
        entry: dict[str, str] = {
            "TrainingInputMode": channel.input_mode,
            "S3DistributionType": channel.distribution,
            "RecordWrapperType": "None",
        }
        if channel.content_type:
            entry["ContentType"] = channel.content_type
        config[name] = entry
    if job.launcher == "model-trainer" and job.is_script_mode:
        # ModelTrainer ships the code and its drivers as two extra channels, after the user's.
        for name in ("code", "sm_drivers"):
            config[name] = {
                "TrainingInputMode": "File",
                "S3DistributionType": "FullyReplicated",
                "RecordWrapperType": "None",
            }
    return config


def platform_files(job: JobSpec, host: str, machine: Machine) -> dict[str, str]:
    """The config files under ``/opt/ml/input/config``, keyed by path relative to ``/opt/ml``."""
    return {
        "input/config/hyperparameters.json": json.dumps(serialized_hyperparameters(job), indent=2),
        "input/config/resourceconfig.json": json.dumps(resource_config(job, host, machine), indent=2),
        "input/config/inputdataconfig.json": json.dumps(input_data_config(job), indent=2),
    }


#: Directories the platform creates in every container (``/opt/ml/...``).
PLATFORM_DIRS = ("input/config", "input/data", "model", "output/data", "output/intermediate", "code", "checkpoints")


def platform_env(job: JobSpec) -> dict[str, str]:
    """Variables the service sets: the job name and the job's ``Environment`` map."""
    return {"TRAINING_JOB_NAME": job.name, **job.environment}


# --- launcher layer ------------------------------------------------------------------------------


def code_dir(job: JobSpec, opt_ml: PurePosixPath) -> PurePosixPath:
    """Where the entry point lives: ``/opt/ml/code`` (toolkit) or the v3 ``code`` channel."""
    if job.launcher == "model-trainer":
        return opt_ml / "input" / "data" / "code"
    return opt_ml / "code"


def channels_seen(job: JobSpec) -> list[str]:
    """``SM_CHANNELS``: sorted by the toolkit; in ``inputdataconfig.json`` order by v3."""
    names = list(input_data_config(job))
    return names if job.launcher == "model-trainer" else sorted(names)


def decoded_hyperparameters(job: JobSpec) -> dict[str, Any]:
    """User hyperparameters as the launcher decodes them (``json.loads``, else the raw string)."""
    decoded = {}
    for key, raw in serialized_hyperparameters(job).items():
        if key.startswith("sagemaker_"):
            continue
        try:
            decoded[key] = json.loads(raw)
        except json.JSONDecodeError:
            decoded[key] = raw
    return decoded


def _env_value(value: Any) -> str:
    """``mapping.to_env_vars``: strings unchanged, anything else compact sorted JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))


def launcher_env(job: JobSpec, host: str, machine: Machine, opt_ml: PurePosixPath) -> dict[str, str]:
    """The variables the launcher inside the container adds before it starts the entry point."""
    if job.launcher == "model-trainer":
        return _model_trainer_env(job, host, machine, opt_ml)
    return _toolkit_env(job, host, machine, opt_ml)


def _common_paths(job: JobSpec, opt_ml: PurePosixPath) -> dict[str, str]:
    channels = channels_seen(job)
    encode = _env_value if job.launcher == "toolkit" else json.dumps
    return {
        "SM_MODEL_DIR": str(opt_ml / "model"),
        "SM_INPUT_DIR": str(opt_ml / "input"),
        "SM_INPUT_CONFIG_DIR": str(opt_ml / "input" / "config"),
        "SM_OUTPUT_DIR": str(opt_ml / "output"),
        "SM_OUTPUT_DATA_DIR": str(opt_ml / "output" / "data"),
        "SM_CHANNELS": encode(channels),
        **{f"SM_CHANNEL_{name.upper()}": str(opt_ml / "input" / "data" / name) for name in channels},
    }


def _toolkit_env(job: JobSpec, host: str, machine: Machine, opt_ml: PurePosixPath) -> dict[str, str]:
    """``Environment.to_env_vars()`` (TK environment.py) plus what ``training.py`` (PT) sets."""
    hps = decoded_hyperparameters(job)
    framework = {
        key: json.loads(raw)
        for key, raw in serialized_hyperparameters(job).items()
        if key.startswith("sagemaker_") and key not in _TOOLKIT_NOT_FRAMEWORK
    }
    hosts = job.hosts
    group = "homogeneousCluster"
    distributed = job.distribution != "none"
    paths = _common_paths(job, opt_ml)
    module_dir = str(code_dir(job, opt_ml))
    properties: dict[str, Any] = {
        "additional_framework_parameters": framework,
        "channel_input_dirs": {name: str(opt_ml / "input" / "data" / name) for name in channels_seen(job)},
        "current_host": host,
        "current_instance_group": group,
        "current_instance_group_hosts": hosts,
        "current_instance_type": job.instance_type,
        "distribution_hosts": hosts if distributed else [],
        "distribution_instance_groups": [group] if distributed else [],
        "framework_module": TOOLKIT_FRAMEWORK_MODULE,
        "hosts": hosts,
        "hyperparameters": hps,
        "input_config_dir": str(opt_ml / "input" / "config"),
        "input_data_config": input_data_config(job),
        "input_dir": str(opt_ml / "input"),
        "instance_groups": [group],
        "instance_groups_dict": {group: resource_config(job, host, machine)["instance_groups"][0]},
        "is_hetero": False,
        "is_master": host == hosts[0],
        "is_modelparallel_enabled": None,
        "is_smddpmprun_installed": False,
        "is_smddprun_installed": False,
        "job_name": job.name,
        "log_level": 20,
        "master_hostname": hosts[0],
        "model_dir": str(opt_ml / "model"),
        "module_dir": module_dir,
        "module_name": (job.entry_point or "None").removesuffix(".py"),  # TK _parse_module_name
        "network_interface_name": machine.network_interface,
        "num_cpus": machine.num_cpus,
        "num_gpus": machine.num_gpus,
        "num_neurons": 0,
        "output_data_dir": str(opt_ml / "output" / "data"),
        "output_dir": str(opt_ml / "output"),
        "output_intermediate_dir": str(opt_ml / "output" / "intermediate"),
        "resource_config": resource_config(job, host, machine),
        "topology": [],
        "user_entry_point": job.entry_point or "",
    }
    env = {
        "SM_HOSTS": _env_value(hosts),
        "SM_NETWORK_INTERFACE_NAME": machine.network_interface,
        "SM_HPS": _env_value(hps),
        "SM_USER_ENTRY_POINT": job.entry_point or "",
        "SM_FRAMEWORK_PARAMS": _env_value(framework),
        "SM_RESOURCE_CONFIG": _env_value(properties["resource_config"]),
        "SM_INPUT_DATA_CONFIG": _env_value(properties["input_data_config"]),
        "SM_OUTPUT_DATA_DIR": paths["SM_OUTPUT_DATA_DIR"],
        "SM_CHANNELS": paths["SM_CHANNELS"],
        "SM_CURRENT_HOST": host,
        "SM_CURRENT_INSTANCE_TYPE": job.instance_type,
        "SM_CURRENT_INSTANCE_GROUP": group,
        "SM_CURRENT_INSTANCE_GROUP_HOSTS": _env_value(hosts),
        "SM_INSTANCE_GROUPS": _env_value([group]),
        "SM_INSTANCE_GROUPS_DICT": _env_value(properties["instance_groups_dict"]),
        "SM_DISTRIBUTION_INSTANCE_GROUPS": _env_value(properties["distribution_instance_groups"]),
        "SM_IS_HETERO": "false",
        "SM_MODULE_NAME": properties["module_name"],
        "SM_LOG_LEVEL": "20",
        "SM_FRAMEWORK_MODULE": properties["framework_module"],
        "SM_INPUT_DIR": paths["SM_INPUT_DIR"],
        "SM_INPUT_CONFIG_DIR": paths["SM_INPUT_CONFIG_DIR"],
        "SM_OUTPUT_DIR": paths["SM_OUTPUT_DIR"],
        "SM_NUM_CPUS": str(machine.num_cpus),
        "SM_NUM_GPUS": str(machine.num_gpus),
        "SM_NUM_NEURONS": "0",
        "SM_MODEL_DIR": paths["SM_MODEL_DIR"],
        "SM_MODULE_DIR": module_dir,
        "SM_TRAINING_ENV": _env_value(properties),
        "SM_USER_ARGS": _env_value(toolkit_cmd_args(hps)),
        "SM_OUTPUT_INTERMEDIATE_DIR": properties["output_intermediate_dir"],
        **{key: value for key, value in paths.items() if key.startswith("SM_CHANNEL_")},
        **{f"SM_HP_{key.upper()}": _env_value(value) for key, value in hps.items()},
        "SAGEMAKER_TRAINING_MODULE": TOOLKIT_FRAMEWORK_MODULE,  # the DLC image's, inherited
        "CURRENT_HOST": host,
        "SAGEMAKER_JOB_NAME": job.name,
        "SAGEMAKER_REGION": "us-east-1",
        "PYTHONPATH": module_dir,  # the toolkit exports sys.path, which starts with /opt/ml/code
        # PT training.py, before any runner starts (single-process jobs too):
        "NCCL_SOCKET_IFNAME": machine.network_interface,
        "NCCL_IB_DISABLE": "1",
        "NCCL_DEBUG": "WARN",
        "MASTER_ADDR": hosts[0],
        "MASTER_PORT": str(MASTER_PORT),
    }
    if job.distribution == "torchrun":  # TK torch_distributed.py _setup()
        env["NCCL_PROTO"] = "simple"
        if job.instance_type in _EFA_NCCL_INSTANCES:
            env["FI_PROVIDER"] = "efa"
        if job.instance_type in _EFA_RDMA_INSTANCES:
            env.update({"FI_EFA_USE_DEVICE_RDMA": "1", "RDMAV_FORK_SAFE": "1"})
    return env


def _model_trainer_env(job: JobSpec, host: str, machine: Machine, opt_ml: PurePosixPath) -> dict[str, str]:
    """What v3 ``scripts/environment.py`` writes to ``sm_training.env`` (``json.dumps`` defaults)."""
    hps = decoded_hyperparameters(job)
    hosts = sorted(job.hosts)  # lexicographic, as environment.py sorts them
    paths = _common_paths(job, opt_ml)
    config = resource_config(job, host, machine)
    env = {
        "SM_MODEL_DIR": paths["SM_MODEL_DIR"],
        "SM_INPUT_DIR": paths["SM_INPUT_DIR"],
        "SM_INPUT_DATA_DIR": str(opt_ml / "input" / "data"),
        "SM_INPUT_CONFIG_DIR": paths["SM_INPUT_CONFIG_DIR"],
        "SM_OUTPUT_DIR": paths["SM_OUTPUT_DIR"],
        "SM_OUTPUT_FAILURE": str(opt_ml / "output" / "failure"),
        "SM_OUTPUT_DATA_DIR": paths["SM_OUTPUT_DATA_DIR"],
        "SM_LOG_LEVEL": "20",
        "SM_MASTER_ADDR": "algo-1",  # hard-coded in environment.py
        "SM_MASTER_PORT": str(MASTER_PORT),
    }
    if job.is_script_mode:
        env["SM_SOURCE_DIR"] = str(code_dir(job, opt_ml))
        env["SM_ENTRY_SCRIPT"] = job.entry_point or ""
    if job.distribution == "torchrun":
        env["SM_DISTRIBUTED_DRIVER_DIR"] = str(opt_ml / "input/data/sm_drivers/distributed_drivers")
        env["SM_DISTRIBUTED_CONFIG"] = json.dumps({"process_count_per_node": job.processes_per_host, "smp": None})
    env.update({key: value for key, value in paths.items() if key.startswith("SM_CHANNEL_")})
    env["SM_CHANNELS"] = paths["SM_CHANNELS"]
    env.update({f"SM_HP_{key.replace('-', '_').upper()}": _safe_serialize(value) for key, value in hps.items()})
    env.update(
        {
            "SM_HPS": json.dumps(hps),
            "SM_CURRENT_HOST": host,
            "SM_CURRENT_INSTANCE_TYPE": job.instance_type,
            "SM_HOSTS": json.dumps(hosts),
            "SM_NETWORK_INTERFACE_NAME": machine.network_interface,
            "SM_HOST_COUNT": str(len(hosts)),
            "SM_CURRENT_HOST_RANK": str(hosts.index(host)),
            "SM_NUM_CPUS": str(machine.num_cpus),
            "SM_NUM_GPUS": str(machine.num_gpus),
            "SM_NUM_NEURONS": "0",
            "SM_RESOURCE_CONFIG": json.dumps(config),
            "SM_INPUT_DATA_CONFIG": json.dumps(input_data_config(job)),
            "SM_TRAINING_ENV": json.dumps(
                {
                    "channel_input_dirs": {n: str(opt_ml / "input" / "data" / n) for n in channels_seen(job)},
                    "current_host": host,
                    "current_instance_type": job.instance_type,
                    "hosts": hosts,
                    "master_addr": "algo-1",
                    "master_port": MASTER_PORT,
                    "hyperparameters": hps,
                    "input_data_config": input_data_config(job),
                    "input_config_dir": paths["SM_INPUT_CONFIG_DIR"],
                    "input_data_dir": env["SM_INPUT_DATA_DIR"],
                    "input_dir": paths["SM_INPUT_DIR"],
                    "job_name": job.name,
                    "log_level": 20,
                    "model_dir": paths["SM_MODEL_DIR"],
                    "network_interface_name": machine.network_interface,
                    "num_cpus": machine.num_cpus,
                    "num_gpus": machine.num_gpus,
                    "num_neurons": 0,
                    "output_data_dir": paths["SM_OUTPUT_DATA_DIR"],
                    "resource_config": config,
                }
            ),
        }
    )
    if job.is_script_mode:  # sm_train.sh: `cd /opt/ml/input/data/code` (bash exports PWD)
        env["PWD"] = str(code_dir(job, opt_ml))
    # sm_train.sh sources `export K='<value>'` lines: bash reads each value back (docs/toolkit.md).
    env = {key: _sourced(value) for key, value in env.items()}
    if job.distribution == "torchrun":  # torchrun_driver.py setup_env()
        if job.instance_type in _MODEL_TRAINER_EFA_NCCL_INSTANCES:
            env["FI_PROVIDER"] = "efa"
        if job.instance_type in _EFA_RDMA_INSTANCES:
            env.update({"FI_EFA_USE_DEVICE_RDMA": "1", "RDMAV_FORK_SAFE": "1"})
        env.update({"NCCL_SOCKET_IFNAME": machine.network_interface, "NCCL_PROTO": "simple"})
    return env


#: v3 ``common/utils.py`` ``SM_EFA_NCCL_INSTANCES`` (sagemaker-train 1.27.0): the toolkit's list
#: without ``ml.p6e-gb200.36xlarge``; ``SM_EFA_RDMA_INSTANCES`` is the toolkit's.
_MODEL_TRAINER_EFA_NCCL_INSTANCES = _EFA_NCCL_INSTANCES - {"ml.p6e-gb200.36xlarge"}
#: Characters bash leaves alone in an unquoted word (no splitting, expansion or globbing).
_SHELL_PLAIN = re.compile(r"[A-Za-z0-9_.,:/+=@%-]*")


def _sourced(value: str) -> str:
    """What bash makes of ``export K='<value>'``: v3 ``environment.py`` writes each variable so,
    unescaped, and ``sm_train.sh`` sources the file. A single quote in the value ends the quoting:
    where the text between two of them is a plain word, the quotes just disappear (``'single'`` ->
    ``single``), as here. Otherwise (an odd number of quotes, or spaces or shell characters between
    two) bash splits, expands or fails, and the drivers' job fails at ``source``; the emulation
    keeps the value (docs/toolkit.md, "ModelTrainer drivers"). Checked on sagemaker-local."""
    if "'" not in value:
        return value
    parts = value.split("'")
    if len(parts) % 2 == 0 or not all(_SHELL_PLAIN.fullmatch(part) for part in parts[1::2]):
        return value
    return "".join(parts)


def toolkit_cmd_args(hyperparameters: dict[str, Any]) -> list[str]:
    """TK ``mapping.to_cmd_args``: sorted keys, ``-k`` for one letter, ``str()`` of each value
    (so booleans become ``True``/``False``), dicts as sorted ``k=v,…``, None as ``""``."""
    args: list[str] = []
    for key in sorted(hyperparameters):
        value = hyperparameters[key]
        args.append(f"-{key}" if len(key) == 1 else f"--{key}")
        if isinstance(value, dict):
            args.append(",".join(f"{k}={v}" for k, v in sorted(value.items())))
        else:
            args.append("" if value is None else str(value))
    return args


def model_trainer_cmd_args(hyperparameters: dict[str, Any]) -> list[str]:
    """v3 ``hyperparameters_to_cli_args``: insertion order, always ``--key``, JSON for non-strings.

    The drivers read the hyperparameters back from ``SM_HPS`` as bash sourced it (:func:`_sourced`)
    and ``safe_deserialize`` each value again before ``safe_serialize``."""
    seen = json.loads(_sourced(json.dumps(hyperparameters)))
    args: list[str] = []
    for key, value in seen.items():
        args += [f"--{key}", _safe_serialize(_safe_deserialize(value))]
    return args


def _safe_deserialize(value: Any) -> Any:
    """v3 ``safe_deserialize``: ``json.loads`` of a string where it parses, else the value."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def script_args(job: JobSpec) -> list[str]:
    hps = decoded_hyperparameters(job)
    if job.launcher == "model-trainer":
        return model_trainer_cmd_args(hps)
    return toolkit_cmd_args(hps)


def launch_command(job: JobSpec, host: str, machine: Machine) -> list[str]:
    """The command the launcher runs on ``host`` (from its working directory :func:`code_dir`).

    Toolkit: ``[python, --, train.py, *args]`` or ``torchrun --nnodes N --nproc_per_node P
    [--master_addr … --master_port 7777 --node_rank i] train.py *args`` (multi-node flags only
    when N > 1; separate tokens). v3 torchrun driver: the same flags in ``--flag=value`` form.
    """
    if not job.is_script_mode:
        return ["train"]
    script, args = job.entry_point or "", script_args(job)
    if job.distribution == "none":
        if job.launcher == "toolkit":  # TK process.py: the script after '--' (its sys.argv is the same)
            return [machine.python, "--", script, *args]
        return [machine.python, script, *args]
    hosts = sorted(job.hosts) if job.launcher == "model-trainer" else job.hosts
    flags = {"nnodes": str(len(hosts)), "nproc_per_node": str(job.processes_per_host)}
    if len(hosts) > 1:
        flags.update(master_addr=hosts[0], master_port=str(MASTER_PORT), node_rank=str(hosts.index(host)))
    if job.launcher == "model-trainer":
        options = [f"--{flag}={value}" for flag, value in flags.items()]
    else:
        options = [token for flag, value in flags.items() for token in (f"--{flag}", value)]
    return [machine.torchrun, *options, script, *args]


#: The file a launcher installs before the entry point, in the code directory.
REQUIREMENTS_FILE = "requirements.txt"


def requirements_command(job: JobSpec, machine: Machine) -> list[str]:
    """What the launcher runs in :func:`code_dir` before the entry point when ``source_dir`` holds
    ``requirements.txt``: the same pip call in both flavours, failing the job if pip fails.

    Toolkit: ``entry_point.install`` calls ``modules.install_requirements`` for a script whose
    directory has ``requirements.txt`` (without ``setup.py``): ``<sys.executable> -m pip install -r
    requirements.txt`` (``-i <index>`` added for a CodeArtifact ``CA_REPOSITORY_ARN``), on every
    host, before the runner starts. SDK v3: ``sm_train.sh`` (``templates.INSTALL_REQUIREMENTS``),
    when ``SourceCode.requirements`` is set, runs ``$SM_PYTHON_CMD .../sm_drivers/scripts/
    install_requirements.py requirements.txt``, which runs the same command (``check_call``) after
    ``cd`` to the code channel. The harness sets ``SourceCode.requirements`` whenever the file is
    there, so both flavours install it (docs/job-spec.md).
    """
    return [machine.python, "-m", "pip", "install", "-r", REQUIREMENTS_FILE]


def requirements_announcement(job: JobSpec, command: list[str]) -> list[str]:
    """The lines the launcher prints before the install (toolkit ``modules.py`` logger; v3
    ``sm_train.sh``'s ``echo`` and its ``set -x`` trace of the driver script)."""
    if job.launcher == "model-trainer":
        driver = "/opt/ml/input/data/sm_drivers/scripts/install_requirements.py"
        return ["Installing requirements", f"+ {command[0]} {driver} {REQUIREMENTS_FILE}"]
    return ["Installing dependencies from requirements.txt:", " ".join(command)]


#: Exit status of a host whose requirements could not be installed: the toolkit's trainer exits
#: ``DEFAULT_FAILURE_CODE`` (1) on a ``ClientError``; v3's ``install_requirements.py`` dies of its
#: ``CalledProcessError`` (1) and ``sm_train.sh``'s ``handle_error`` exits with that status.
REQUIREMENTS_EXIT_CODE = 1


def requirements_failure_message(job: JobSpec, exit_code: int, command: list[str], stderr: str) -> str:
    """``/opt/ml/output/failure`` when pip fails: the toolkit's ``InstallRequirementsError`` (TK
    ``errors.py`` ``_CalledProcessError.__str__``, stderr captured as the PyTorch toolkit asks
    with ``capture_error=True``); v3's ``handle_error`` message, the same as for a failed script."""
    if job.launcher == "model-trainer":
        return failure_message(job, exit_code, command, [])
    return (
        f'InstallRequirementsError:\nExitCode {exit_code}\nErrorMessage "{stderr.strip()}"\n'
        f'Command "{" ".join(command)}"'
    )


def failure_message(job: JobSpec, exit_code: int, command: list[str], error_lines: list[str]) -> str:
    """What the launcher writes to ``/opt/ml/output/failure`` when the entry point fails
    (only where the job wrote none itself). TK ``errors.py`` / v3 ``sm_train.sh``."""
    if job.launcher == "model-trainer":
        return (
            "Training Execution failed. For more details, see CloudWatch logs at "
            f"'aws/sagemaker/TrainingJobs'.\nTrainingJob - {job.name}"
        )
    info = '\nExtraInfo "OutOfMemory: Process killed by SIGKILL (signal 9)"' if exit_code == 137 else ""
    # TK process.py: watch() keeps each line stripped of " :\n" plus a newline, joined by spaces;
    # check_error() then drops repeated lines and strips the whole (sagemaker-training 5.1.4).
    joined = " ".join(line.strip(" :\n") + "\n" for line in dict.fromkeys(error_lines))
    message = "\n".join(dict.fromkeys(joined.split("\n"))).strip()
    return (
        f'ExecuteUserScriptError:\nExitCode {exit_code}\nErrorMessage "{message}"{info}\nCommand "{" ".join(command)}"'
    )
