# mypy: disallow-subclassing-any=False
# (Airflow's BaseOperator is untyped where Airflow is not installed)
"""A pre-flight task for DAGs: climb the ladder on the worker with the training task's own request,
before that task submits it, and fail the DAG run when the job departs (docs/airflow.md).

    from harness.airflow import HarnessPreflightOperator

    preflight = HarnessPreflightOperator(task_id="preflight", training_task_id="train",
                                         source_dir="/opt/airflow/dags/src", rungs=["single", "local"])
    preflight >> train

The request is read from the training task in this very DAG run (its templates rendered in the
run's context, or its callable called with boto3 stubbed: :mod:`harness.airflow.dags`), so it is
written once, in the training task. The verdict goes to the task log as Markdown; the HTML report,
the Markdown and JSON verdicts and every run record are kept under ``destination`` (default: the
worker's Airflow log folder, ``harness/dag_id=.../run_id=.../task_id=.../attempt=N/``) or uploaded
to an ``s3://`` prefix; the task returns (XCom) the outcome and where the reports are.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

try:
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # Airflow < 3.2
    from airflow.exceptions import AirflowFailException  # type: ignore[no-redef,unused-ignore]

from harness.airflow.dags import TrainingRequest, airflow_attr, request_of, template_context
from harness.errors import HarnessError
from harness.judge.protocol import Tolerance
from harness.ladder.climbing import climb
from harness.record.run_record import RunRecord
from harness.report import to_html, to_json, to_markdown, to_text
from harness.runtime import interrupts


class HarnessPreflightOperator(BaseOperator):
    """Climbs ``rungs`` (those the worker can run: ``single`` and ``local`` anywhere, ``docker``
    where the worker has an engine) with the request of the task ``training_task_id`` and fails
    (without retries) when the verdict is a divergence or a failure.

    :param training_task_id: the task whose ``CreateTrainingJob`` request is checked (a
        ``SageMakerTrainingOperator`` or a ``PythonOperator``/``@task`` calling boto3).
    :param rungs: the rungs to climb, cheapest first.
    :param source_dir: local checkout of the job's code, for a request whose code is on S3
        (templated).
    :param destination: where reports and records go: a directory or an ``s3://`` prefix (templated;
        default: the Airflow log folder of this task try).
    :param require: rungs that must run (a rung that cannot run here fails the task).
    :param keep_going: climb every rung even after one has departed.
    :param tolerance: metric and tensor tolerances (default: the harness's).
    :param rung_options: settings per rung, e.g. ``{"docker": {"shm_size": "1g"}}``.
    """

    template_fields: Sequence[str] = ("source_dir", "destination")
    ui_color = "#e8f4ea"

    def __init__(
        self,
        *,
        training_task_id: str,
        rungs: Sequence[str] = ("single", "local"),
        source_dir: str | None = None,
        destination: str | None = None,
        require: Sequence[str] = (),
        keep_going: bool = False,
        tolerance: Tolerance | None = None,
        rung_options: Mapping[str, Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("retries", 0)  # a divergence does not go away on a retry
        super().__init__(**kwargs)
        self.training_task_id = training_task_id
        self.rungs = list(rungs)
        self.source_dir = source_dir
        self.destination = destination
        self.require = list(require)
        self.keep_going = keep_going
        self.tolerance = tolerance or Tolerance()
        self.rung_options = {rung: dict(options) for rung, options in (rung_options or {}).items()}

    def execute(self, context: Any) -> dict[str, Any]:
        try:
            read = self.training_request(context)
            job = read.job(source_dir=Path(self.source_dir) if self.source_dir else None)
        except HarnessError as exc:
            raise AirflowFailException(_said(exc)) from None
        self.log.info("checking the request of task %r (%s): job %s", read.task_id, read.source, job.name)
        if read.other_calls:
            self.log.info("its callable's other boto3 calls, answered by the stub: %s", ", ".join(read.other_calls))
        remote = self.destination if self.destination and self.destination.startswith("s3://") else None
        if remote:  # before the ladder runs, not after: a destination it cannot write is known now
            from harness.spec.s3 import S3Uri

            try:
                S3Uri.parse(remote)
            except ValueError as exc:
                raise AirflowFailException(f"destination: {exc}") from None
        scratch = Path(tempfile.mkdtemp(prefix="harness-preflight-")) if remote else None
        out = scratch or (Path(self.destination) if self.destination else _log_folder(context))
        try:
            out.mkdir(parents=True, exist_ok=True)
            try:
                with _stopping_on_signals():  # Airflow's SIGTERM (a timeout, a kill): every process stopped
                    result = climb(
                        job,
                        out / "runs",
                        rungs=self.rungs,
                        tolerance=self.tolerance,
                        options=lambda rung: dict(self.rung_options.get(rung, {})),
                        progress=self._starting,
                        on_record=self._ran,
                        require=self.require,
                        keep_going=self.keep_going,
                    )
            except HarnessError as exc:
                raise AirflowFailException(_said(exc)) from None
            verdict = result.verdict
            reports = {"html": out / "report.html", "markdown": out / "verdict.md", "json": out / "verdict.json"}
            for key, render in (("html", to_html), ("markdown", to_markdown), ("json", to_json)):
                reports[key].write_text(render(verdict, at=reports[key]) + "\n", encoding="utf-8")
            self.log.info("verdict of the ladder (Markdown):\n%s", to_markdown(verdict, at=reports["markdown"]))
            where = {key: str(path) for key, path in reports.items()}
            if remote:
                from harness.spec import s3

                prefix = remote.rstrip("/") + "/"
                s3.upload_tree(out, prefix)
                where = {key: prefix + path.name for key, path in reports.items()}
            self.log.info("report: %s; records: %s", where["html"], remote or out / "runs")
            summary = {
                "outcome": verdict.outcome,
                "first_rung": verdict.first_rung,
                "rungs": list(verdict.rungs),
                "skipped": dict(verdict.skipped),
                "reports": where,
                "records": remote.rstrip("/") + "/runs/" if remote else str(out / "runs"),
            }
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        if verdict.exit_code != 0:
            raise AirflowFailException(
                f"the training job of task {read.task_id!r} departs: {to_text(verdict).splitlines()[0]}; "
                f"report: {where['html']}"
            )
        return summary

    def training_request(self, context: Any) -> TrainingRequest:
        """The training task's request in this DAG run, rendered in the run's own context."""
        dag = context["dag"]
        origin = f"{dag.fileloc}: DAG {dag.dag_id!r}, task {self.training_task_id!r}"
        if self.training_task_id not in dag.task_dict:
            raise HarnessError(
                f"{origin}: no such task in the DAG (training_task_id)",
                hint=f"name one of its tasks: {', '.join(sorted(dag.task_dict))}",
            )
        ti = context["ti"]
        training = dag.get_task(self.training_task_id)
        run_context = ti._ti_context_from_server
        read = request_of(template_context(training, run_context, start_date=ti.start_date), origin=origin)
        dag_run = run_context.dag_run
        return TrainingRequest(
            read.request,
            dag.dag_id,
            self.training_task_id,
            read.source,
            Path(dag.fileloc),
            dag_run.logical_date,
            other_calls=read.other_calls,
        )

    def _starting(self, rung: str) -> None:
        self.log.info("[%s] starting", rung)

    def _ran(self, record: RunRecord) -> None:
        self.log.info("[%s] %s (%s)", record.rung, record.status, record.root)


def _stopping_on_signals() -> contextlib.AbstractContextManager[None]:
    """SIGTERM and SIGHUP stop the ladder as they stop the command line (every process and container
    stopped with bounded waits, the record marked interrupted); signal handlers are the main
    thread's only, so elsewhere the ladder runs as it is."""
    if threading.current_thread() is threading.main_thread():
        return interrupts.stopping_on_signals()
    return contextlib.nullcontext()


def _said(exc: HarnessError) -> str:
    return exc.message + (f" (hint: {exc.hint})" if exc.hint else "")


def _log_folder(context: Any) -> Path:
    """Where Airflow keeps this task try's logs on the worker, under ``harness/``, laid out as
    Airflow lays out its log files."""
    conf = airflow_attr("airflow.sdk", "conf") or airflow_attr("airflow.configuration", "conf")  # Airflow < 3.2
    ti = context["ti"]
    base = Path(conf.get("logging", "base_log_folder")).expanduser()
    mapped = f"map_index={ti.map_index}/" if ti.map_index is not None and ti.map_index >= 0 else ""
    return (
        base
        / "harness"
        / f"dag_id={ti.dag_id}"
        / f"run_id={ti.run_id}"
        / f"task_id={ti.task_id}"
        / f"{mapped}attempt={ti.try_number}"
    )
