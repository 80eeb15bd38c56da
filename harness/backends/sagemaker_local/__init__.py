"""The ``sagemaker-local`` rung: the job run by the SageMaker Python SDK v3 itself, in local mode.

``ModelTrainer(training_mode=Mode.LOCAL_CONTAINER)`` with ``source_code`` (the job's
``source_dir``/``entry_point``), ``Torchrun(process_count_per_node=...)``, the job's
hyperparameters, environment and channels (local directories as ``InputData``). The SDK writes
the config files and a compose file with one service per host and runs ``docker compose up
--abort-on-container-exit``; its drivers (``sm_train.sh``) launch the entry point. The harness
does not build any of the contract here: the record holds what the SDK really wrote.

What the harness adds, without changing what the SDK does:

* **the probe**: two extra channels, ``harness_probe`` (the probe, on ``PYTHONPATH``) and
  ``harness_record`` (a writable host directory, ``HARNESS_PROBE_DIR``); the SDK controls the
  mounts, so channels are the only way in. Every container gets the same environment, so the
  probe learns its host from ``resourceconfig.json`` (:mod:`harness.backends.sagemaker_sdk`).
* **per-host evidence the SDK deletes**: on success the SDK removes each host's ``input`` and
  ``output`` directories. The harness makes them symbolic links into its own work dir before the
  SDK starts (the SDK's ``rmtree`` removes the links, not what they point to), so the config
  files, ``sm_training.env``, ``output/data`` and ``failure`` of each host survive.
* **labels**: the SDK's compose file has no labels, so each run uses its own tag of the image
  carrying ``harness.run_id`` and the owner's pid; containers inherit image labels, so
  :func:`harness.backends.containers.gc` finds what a killed harness left.
* **a network per run**: the SDK names one network, ``sagemaker-local``, for every run, so runs
  at once would share ``algo-N``; the harness renames it in the compose file the SDK writes,
  before compose starts (:mod:`.isolation`; where it cannot, runs take turns under a lock).
* **lifecycle**: ``max_run`` and a signal (Ctrl-C, SIGTERM, SIGHUP) stop the containers (SIGTERM,
  then SIGKILL) and the compose process; afterwards the containers the SDK leaves behind (it never
  runs ``down``), the run's network, the run's image tag and the SDK's work dir are removed,
  whatever the outcome.

The SDK's own behaviours are recorded as rung facts (:func:`.plan.sdk_facts`); each was read in
sagemaker-train's ``local/local_container.py``, ``model_trainer.py`` and ``templates.py`` and
checked on a real run. The phases live in their own modules: :mod:`.plan` (the dry-run),
:mod:`.run` (the SDK's thread, stopping, cleanup), :mod:`.collect` (what the SDK wrote and ran),
:mod:`.isolation` (runs at once kept apart).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from pydantic import NonNegativeFloat

from harness.backends import orphans, sdk_installs
from harness.backends.base import Backend, Capabilities, Progress, RungOptions
from harness.backends.containers import (
    EngineClient,
    engine_gpus,
    engine_unavailable_reason,
    gc_finished_runs,
    host_gpu_count,
    resolve_image,
    run_labels,
    shielded,
)
from harness.backends.hosts import s3_unsupported
from harness.backends.sagemaker_local.collect import collect
from harness.backends.sagemaker_local.isolation import isolated
from harness.backends.sagemaker_local.plan import SdkPlan, compose_command, plan_job
from harness.backends.sagemaker_local.run import (
    SdkRun,
    ThreadStdout,
    cleanup,
    labelled_image,
    local_model_trainer,
    prepare,
    supervise,
)
from harness.backends.sagemaker_sdk import RESERVED_CHANNELS, sdk_missing_reason
from harness.record.run_record import RecordWriter, Status
from harness.runtime import interrupts
from harness.runtime.supervise import STOP_GRACE_S
from harness.spec.job import JobSpec


class SageMakerLocalOptions(RungOptions):
    #: Script-mode base image; default the job's, else :func:`harness.runtime.images.ensure_torch_image`.
    image: str | None = None
    #: ``local_gpu``; default: when the engine can pass NVIDIA GPUs.
    gpus: bool | None = None
    #: Seconds between SIGTERM and SIGKILL on ``max_run`` or a signal.
    stop_grace_s: NonNegativeFloat = STOP_GRACE_S


class SageMakerLocalBackend(EngineClient, Backend[JobSpec, SdkPlan]):
    name = "sagemaker-local"
    workload = "training"
    capabilities = Capabilities(gpus=True, separate_hosts=True, containers=True, hang_detection=False)
    Options = SageMakerLocalOptions
    options: SageMakerLocalOptions

    @classmethod
    def leftover_collectors(cls) -> tuple[Callable[[], list[str]], ...]:
        # the SDK's containers first: they write into the work dir, which a live writer would remake
        return (gc_finished_runs, orphans.gc)

    def unavailable_reason(self) -> str | None:
        missing = sdk_missing_reason() or engine_unavailable_reason(self._docker, gpus=bool(self.options.gpus))
        if missing:
            return missing
        if shutil.which("docker") is None:
            return "no docker CLI on PATH: the SDK runs `docker compose version` to find compose"
        if compose_command() is None:
            return (
                "no docker compose: neither the v2 plugin (`docker compose`) nor docker-compose v1 is "
                "installed; the SDK runs the job with it (apt-get install docker-compose)"
            )
        return None

    def unsupported_reason(self, job: JobSpec) -> str | None:
        if not job.is_script_mode:
            return (
                "a bring-your-own image: SDK v3 local mode starts it without the `train` argument "
                "SageMaker passes (no command in its compose file), so it would not run as on SageMaker"
            )
        sharded = [n for n, c in job.channels.items() if c.distribution == "ShardedByS3Key"]
        if sharded:
            return (
                f"channels {sharded} are ShardedByS3Key: local mode refuses it on S3 channels and drops it on local "
                "directories (every host gets every file, where SageMaker gives each host its share), so the job "
                "would read other data than on SageMaker; the local and docker rungs shard them as SageMaker does"
            )
        s3_reason = s3_unsupported(job)
        if s3_reason:
            return s3_reason
        reserved = [name for name in job.channels if name in RESERVED_CHANNELS]
        if reserved:
            return f"channels {reserved} are names ModelTrainer or the harness adds ({', '.join(RESERVED_CHANNELS)})"
        return None

    def _num_gpus(self) -> int:
        enabled = self.options.gpus if self.options.gpus is not None else engine_gpus(self.client)
        return host_gpu_count() if enabled else 0

    def plan(self, job: JobSpec) -> SdkPlan:
        return plan_job(
            self.name, job, num_gpus=self._num_gpus(), image=self.options.image, stop_grace_s=self.options.stop_grace_s
        )

    def _execute(self, plan: SdkPlan, record: RecordWriter, progress: Progress | None) -> Status:
        """Prepare the SDK's container root, run ``train()`` under the harness's clock, collect
        what it wrote; whatever happens, remove what the SDK and the run left."""
        client, job = self.client(), plan.job
        labels = run_labels(record.manifest.run_id)
        run_image = ""
        with isolated(plan.work_dir, labels) as isolation:  # a lock, where runs must take turns, is held to the end
            for key, value in isolation.facts.items():
                record.set_fact(key, value)
            stdout = ThreadStdout.install()
            try:
                image = resolve_image(client, job, self.options.image)
                run_image = labelled_image(client, image, labels)
                record.set_fact("image", image)
                record.set_fact("run_image", run_image)
                orphans.claim(plan.work_dir, record.manifest.run_id, record.root)  # for `harness gc`
                prepare(plan)
                if not sdk_installs.prepare_sdk(client, image, job, plan.ours, labels, record):
                    return "failed"  # the host's pip could not get the wheels: failed as sm_train.sh fails
                sdk = SdkRun(local_model_trainer(plan, run_image), plan.ours / "compose.log", stdout)
                timed_out = supervise(sdk, client, plan, record, progress, self.options.stop_grace_s)
                codes = collect(client, plan, sdk, record)
                sdk_installs.collect_sdk(job, plan.ours, record)
            finally:
                with interrupts.deferred():  # a signal now is taken once everything is removed
                    shielded(lambda: cleanup(client, labels, run_image, plan.work_dir, isolation.network))
                stdout.uninstall()
                interrupts.raise_if_requested()
        if timed_out:
            return "timeout"
        missing = [host for host in job.hosts if host not in codes]
        return "succeeded" if not missing and all(code == 0 for code in codes.values()) else "failed"
