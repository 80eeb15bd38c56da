"""The ``CreateTrainingJob`` request a DAG's task will send, read from the DAG itself.

The DAG file is loaded with Airflow's own ``DagBag``; the task's request is

- for a ``SageMakerTrainingOperator``: its ``config``, rendered with Airflow's templating for a
  logical date (default: now), integer fields parsed as the operator parses them before it
  submits;
- for a ``PythonOperator`` (or a ``@task``): the request its callable sends, found by calling it
  with every boto3 call answered by a stub in this process; ``create_training_job`` is captured
  and stops the callable there, so that nothing ever reaches AWS.

The request then becomes a job as ``--from-request`` makes one (:mod:`harness.spec.request`): code on
S3 (``sagemaker_submit_directory``) maps to ``source_dir``, an image to the image. Every error
names the DAG file, the DAG, the task and the field.

Airflow's internals used here (a task instance built without a scheduler, as ``airflow tasks
render`` builds one) are those of Airflow 3; the ``airflow`` extra pins the range tested.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import importlib
import io
import logging
import os
import threading
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from harness.errors import JobSpecError, UsageError
from harness.spec.job import JobSpec, did_you_mean
from harness.spec.request import job_from_request

_INSTALL = "pip install 'sagemaker-parity-harness[airflow]' (apache-airflow 3 and its Amazon provider)"
_KINDS = "a SageMakerTrainingOperator, or a PythonOperator (or @task) whose callable calls create_training_job"


@dataclass(frozen=True)
class TrainingRequest:
    """A task's ``CreateTrainingJob`` request and where it was read."""

    request: dict[str, Any]
    dag_id: str
    task_id: str
    source: str  # how it was read: "SageMakerTrainingOperator.config" or "the callable of PythonOperator"
    dag_file: Path | None = None
    logical_date: dt.datetime | None = None
    other_calls: tuple[str, ...] = ()  # boto3 calls the callable made before, answered by the stub

    @property
    def origin(self) -> str:
        """How errors name it: the DAG file, the DAG and the task."""
        where = f"{self.dag_file}: " if self.dag_file else ""
        return f"{where}DAG {self.dag_id!r}, task {self.task_id!r}"

    def job(self, *, source_dir: Path | None = None) -> JobSpec:
        """The job the request describes; ``source_dir`` replaces code on S3 with a local checkout.
        Relative local paths (a ``file://`` channel, a local ``sagemaker_submit_directory``) are
        read from the DAG file's directory."""
        base = self.dag_file.resolve().parent if self.dag_file else Path.cwd()
        return job_from_request(self.request, origin=self.origin, source_dir=source_dir, base_dir=base)


def job_from_dag(
    dag_file: Path,
    task: str,
    *,
    logical_date: str | dt.datetime | None = None,
    source_dir: Path | None = None,
) -> JobSpec:
    """The job the task ``task`` of the DAG in ``dag_file`` submits (``--from-airflow``)."""
    return training_request(dag_file, task, logical_date=logical_date).job(source_dir=source_dir)


def training_request(dag_file: Path, task: str, *, logical_date: str | dt.datetime | None = None) -> TrainingRequest:
    """The request of the task ``task`` (``TASK_ID``, or ``DAG_ID/TASK_ID`` where several DAGs
    of the file have it) of the DAG in ``dag_file``, rendered for ``logical_date`` (ISO 8601 or a
    datetime; a naive one is in the DAG's time zone; default: now)."""
    _check_dag_file(dag_file)
    with _quiet_airflow():
        _require_airflow("--from-airflow")
        dag = _load_dag(dag_file, task)
        task_id = task.rpartition("/")[2]
        origin = f"{dag_file}: DAG {dag.dag_id!r}, task {task_id!r}"
        operator = dag.get_task(task_id)
        _refuse_mapped(operator, origin)
        when = _logical_date(logical_date, getattr(dag, "timezone", None))
        read = request_of(template_context(operator, _dag_run(dag, when)), origin=origin)
    return TrainingRequest(read.request, dag.dag_id, task_id, read.source, dag_file, when, other_calls=read.other_calls)


# ---- the DAG ------------------------------------------------------------------------------------------


def _require_airflow(what: str) -> None:
    try:
        import airflow  # noqa: F401
    except ImportError:
        raise UsageError(f"{what} needs Apache Airflow, which is not installed here", hint=_INSTALL) from None


@contextlib.contextmanager
def _quiet_airflow() -> Iterator[None]:
    """Airflow's lines ("Filling up the DagBag ...", tracebacks the errors sum up) off the
    harness's output (its structured logs write to ``sys.stderr``), and the logging and warning
    settings importing Airflow makes (an INFO handler on the root logger, writing to stdout)
    undone, so that the rest of the command prints what it printed before."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        quiet = (contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()))
        with warnings.catch_warnings(), quiet[0], quiet[1]:
            yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _check_dag_file(dag_file: Path) -> None:
    if not dag_file.exists():
        raise UsageError(f"{dag_file}: no such DAG file", hint="pass the path of the Python file that defines the DAG")
    if not dag_file.is_file():
        raise UsageError(f"{dag_file}: a directory, not a DAG file", hint="pass the path of one DAG file")


def _load_dag(dag_file: Path, task: str) -> Any:
    """The DAG of ``dag_file`` that holds ``task`` (``TASK_ID`` or ``DAG_ID/TASK_ID``), loaded
    with Airflow's ``DagBag``."""
    dagbag = airflow_attr("airflow.dag_processing.dagbag", "DagBag") or airflow_attr("airflow.models.dagbag", "DagBag")
    bag = dagbag(dag_folder=str(dag_file), safe_mode=False)
    if bag.import_errors:
        problem = next(iter(bag.import_errors.values())).strip().splitlines()
        raise UsageError(
            f"{dag_file}: the DAG file does not import: {problem[-1] if problem else 'unknown error'}",
            hint="`python " + str(dag_file) + "` shows the whole traceback",
        )
    if not bag.dags:
        raise UsageError(f"{dag_file}: defines no DAG", hint="pass the file that defines the training task's DAG")
    dag_id, _, task_id = task.rpartition("/")
    if dag_id:
        if dag_id not in bag.dags:
            raise UsageError(
                f"{dag_file}: no DAG {dag_id!r}{did_you_mean(dag_id, sorted(bag.dags))}",
                hint=f"the file defines: {', '.join(sorted(bag.dags))}",
            )
        dags = [bag.dags[dag_id]]
    else:
        dags = list(bag.dags.values())
    holding = sorted((dag for dag in dags if task_id in dag.task_dict), key=lambda dag: dag.dag_id)
    if not holding:
        task_ids = sorted({t for dag in dags for t in dag.task_dict})
        named = f"DAG {dags[0].dag_id!r}" if len(dags) == 1 else f"any of its DAGs ({', '.join(sorted(bag.dags))})"
        raise UsageError(
            f"{dag_file}: no task {task_id!r} in {named}{did_you_mean(task_id, task_ids)}",
            hint=f"its tasks: {', '.join(task_ids)}",
        )
    if len(holding) > 1:
        raise UsageError(
            f"{dag_file}: task {task_id!r} is in several DAGs ({', '.join(dag.dag_id for dag in holding)})",
            hint=f"name the DAG too: --task {holding[0].dag_id}/{task_id}",
        )
    return holding[0]


def _logical_date(value: str | dt.datetime | None, timezone: Any) -> dt.datetime:
    if value is None:
        return dt.datetime.now(dt.UTC)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise UsageError(
                f"--logical-date {value!r}: not an ISO 8601 date or time",
                hint="e.g. --logical-date 2026-03-04 or 2026-03-04T05:00:00+00:00",
            ) from None
    if value.tzinfo is None:  # as Airflow reads one: in the DAG's time zone
        value = value.replace(tzinfo=timezone or dt.UTC)
    return value


# ---- the task's template context, without a scheduler -------------------------------------------------


def _dag_run(dag: Any, logical_date: dt.datetime) -> Any:
    """What the server tells a task about its DAG run: a manual run at ``logical_date``, its data
    interval as the DAG's timetable infers it for a manual run."""
    from airflow.sdk.api.datamodels._generated import DagRun, TIRunContext

    try:
        from airflow.serialization.encoders import coerce_to_core_timetable

        interval = coerce_to_core_timetable(dag.timetable).infer_manual_data_interval(run_after=logical_date)
        start, end = interval.start, interval.end
    except Exception:  # a timetable this Airflow cannot infer from: the logical date alone
        start = end = logical_date
    run = {
        "dag_id": dag.dag_id,
        "run_id": f"manual__{logical_date.isoformat()}",
        "logical_date": logical_date,
        "data_interval_start": start,
        "data_interval_end": end,
        "run_after": logical_date,
        "start_date": logical_date,
        "end_date": None,
        "run_type": "manual",
        "state": "running",
        "conf": {},
        "consumed_asset_events": [],
        "partition_key": None,
    }
    dag_run = DagRun.model_validate({k: v for k, v in run.items() if k in DagRun.model_fields})
    return TIRunContext(dag_run=dag_run, max_tries=0, variables=[], connections=[])


def template_context(task: Any, run_context: Any, *, start_date: dt.datetime | None = None) -> Any:
    """The template context ``task`` gets in the DAG run ``run_context`` (a ``TIRunContext``:
    the worker's own, or one made by :func:`_dag_run`), as the task runner builds it."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    task = task.prepare_for_execution()  # a copy: rendering never changes the DAG's own task
    ti = RuntimeTaskInstance.model_construct(
        id=uuid.uuid4(),
        task_id=task.task_id,
        dag_id=task.dag_id,
        run_id=run_context.dag_run.run_id,
        try_number=1,
        map_index=-1,
        task=task,
        start_date=start_date or run_context.dag_run.start_date or dt.datetime.now(dt.UTC),
        max_tries=0,
        _ti_context_from_server=run_context,
    )
    return ti.get_template_context()


# ---- the request --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Read:
    request: dict[str, Any]
    source: str
    other_calls: tuple[str, ...] = ()


def _refuse_mapped(task: Any, origin: str) -> None:
    if getattr(task, "is_mapped", False) or type(task).__name__ == "MappedOperator":
        raise UsageError(
            f"{origin}: a mapped task (.expand): it sends one request per map index",
            hint="point at a task that sends one request",
        )


def request_of(context: Mapping[str, Any], *, origin: str) -> _Read:
    """The request the task of ``context`` (from :func:`template_context`: a copy of the DAG's
    task) sends, its templates rendered in ``context``."""
    operator = context["task"]
    kind = type(operator).__name__
    training, python = _operator_classes()
    if training is not None and isinstance(operator, training):
        _render(operator, context, origin)
        _parse_integers(operator)
        if not isinstance(operator.config, dict):
            raise JobSpecError(
                f"{origin}: config: expected the CreateTrainingJob request (an object), "
                f"got {type(operator.config).__name__} after rendering",
                hint="a SageMakerTrainingOperator's config is the request create_training_job takes",
            )
        return _Read(copy.deepcopy(operator.config), f"{kind}.config")
    if python is not None and isinstance(operator, python):
        _refuse_out_of_process(operator, origin)
        _render(operator, context, origin)
        return _captured(operator, context, origin)
    raise UsageError(f"{origin}: {kind} sends no training request the harness can read", hint=f"use {_KINDS}")


def _operator_classes() -> tuple[Any, Any]:
    """SageMakerTrainingOperator (None without the Amazon provider: no DAG here uses it then) and
    PythonOperator."""
    return (
        airflow_attr("airflow.providers.amazon.aws.operators.sagemaker", "SageMakerTrainingOperator"),
        airflow_attr("airflow.providers.standard.operators.python", "PythonOperator"),
    )


def airflow_attr(module: str, name: str) -> Any:
    """``module.name``, or None where this Airflow (or its providers) has no such thing."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _render(operator: Any, context: Mapping[str, Any], origin: str) -> None:
    """Airflow's templating of every templated field; a failure names the field (and the key in it)."""
    try:
        operator.render_template_fields(context)
    except Exception as exc:
        field = _failing_field(operator, context)
        raise JobSpecError(
            f"{origin}: {field or 'templated fields'}: the template does not render: {type(exc).__name__}: {exc}",
            hint="templates render for a manual run at the logical date; without a running task (the command "
            "line), var, conn and XCom pulled from other tasks are not available",
        ) from None


def _failing_field(operator: Any, context: Mapping[str, Any]) -> str | None:
    env = operator.get_template_env()
    for name in operator.template_fields:
        found = _failing_leaf(operator, getattr(operator, name, None), context, env, name)
        if found:
            return found
    return None


def _failing_leaf(operator: Any, value: Any, context: Mapping[str, Any], env: Any, path: str) -> str | None:
    if isinstance(value, dict):
        for key, item in value.items():
            found = _failing_leaf(operator, item, context, env, f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _failing_leaf(operator, item, context, env, f"{path}[{index}]")
            if found:
                return found
        return None
    try:
        operator.render_template(value, context, env)
    except Exception:
        return path
    return None


def _parse_integers(operator: Any) -> None:
    """What the operator does before it submits: fields a template rendered as strings
    (``ResourceConfig.InstanceCount``) become integers again."""
    with contextlib.suppress(AttributeError):
        operator._create_integer_fields()
        operator.parse_config_integers()


def _refuse_out_of_process(operator: Any, origin: str) -> None:
    """The stub answers boto3 in this process only: a callable run elsewhere (a virtualenv, an
    external Python) or asynchronously would reach AWS, so it is never called."""
    elsewhere = airflow_attr("airflow.providers.standard.operators.python", "_BasePythonVirtualenvOperator")
    if elsewhere is not None and isinstance(operator, elsewhere):
        raise UsageError(
            f"{origin}: {type(operator).__name__} runs its callable in another Python, "
            "where the harness cannot stop it from reaching AWS",
            hint="save the request the callable builds (json.dump) and use --from-request",
        )
    if getattr(operator, "is_async", False):
        raise UsageError(
            f"{origin}: an async callable, whose AWS calls the harness cannot stub",
            hint="save the request the callable builds (json.dump) and use --from-request",
        )


class _Captured(BaseException):  # not an Exception: a callable's `except Exception` does not swallow it
    pass


@contextlib.contextmanager
def capturing_create_training_job() -> Iterator[tuple[dict[str, Any], list[str]]]:
    """Every boto3 call this process makes from now on (from this thread, or one it starts)
    answered by a stub: ``create_training_job`` fills the first dict with its request and
    raises :class:`_Captured`; any other call is named in the list and answered with an empty
    response. Nothing reaches AWS; no credentials are needed. Threads already running (a log
    shipper) keep the real boto3."""
    import botocore.client

    captured: dict[str, Any] = {}
    calls: list[str] = []
    original = botocore.client.BaseClient._make_api_call
    others = {thread.ident for thread in threading.enumerate() if thread is not threading.current_thread()}

    def stub(client: Any, operation: str, params: dict[str, Any]) -> Any:
        if threading.get_ident() in others:
            return original(client, operation, params)
        service = client.meta.service_model.service_name
        if service == "sagemaker" and operation == "CreateTrainingJob":
            captured.update(copy.deepcopy(params))
            raise _Captured
        calls.append(f"{service}.{operation}")
        return {"ResponseMetadata": {"HTTPStatusCode": 200}}

    region = (
        {}
        if os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        else {"AWS_DEFAULT_REGION": "us-east-1"}
    )
    with mock.patch.object(botocore.client.BaseClient, "_make_api_call", stub), mock.patch.dict(os.environ, region):
        yield captured, calls


def _captured(operator: Any, context: Mapping[str, Any], origin: str) -> _Read:
    """The request the operator's callable sends: its ``execute`` run as the task runner runs it,
    with boto3 stubbed; stopped at ``create_training_job``."""
    import contextvars

    from airflow.sdk.bases.operator import ExecutorSafeguard

    name = getattr(operator.python_callable, "__qualname__", repr(operator.python_callable))
    source = f"the callable {name} of {type(operator).__name__}"
    with capturing_create_training_job() as (request, calls):
        run = contextvars.copy_context()
        run.run(ExecutorSafeguard.tracker.set, operator)
        try:
            run.run(operator.execute, dict(context))
        except _Captured:
            pass
        except Exception as exc:
            before = f" (its boto3 calls before, answered empty by the stub: {', '.join(calls)})" if calls else ""
            raise UsageError(
                f"{origin}: {name} raised {type(exc).__name__} before calling create_training_job: {exc}{before}",
                hint="the callable runs here with every boto3 call stubbed; run the task with "
                "`airflow tasks test` to see the whole traceback",
            ) from None
    if not request:
        called = f"; its boto3 calls: {', '.join(calls)}" if calls else "; it made no boto3 call"
        raise UsageError(
            f"{origin}: {name} returned without calling a SageMaker client's create_training_job{called}",
            hint=f"the task must be {_KINDS}",
        )
    return _Read(request, source, tuple(calls))
