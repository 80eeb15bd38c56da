"""Airflow: check the training job a DAG will submit, from the DAG itself (docs/airflow.md).

Two ways, both reading the request where the DAG writes it, so that it is written once:

- ``harness ladder --from-airflow DAG_FILE --task TASK_ID`` (and ``run``, ``--dry-run``) loads
  the DAG with Airflow's own ``DagBag`` and takes the task's ``CreateTrainingJob`` request
  (:func:`job_from_dag`);
- :class:`HarnessPreflightOperator`, a task placed before the training task, climbs the ladder on
  the worker and fails the DAG run when the job departs.

Airflow is imported only when one of them is used: the core never needs it
(``pip install '.[airflow]'`` for apache-airflow 3 and the Amazon provider).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.airflow.dags import TrainingRequest, job_from_dag, training_request

if TYPE_CHECKING:
    from harness.airflow.operator import HarnessPreflightOperator

__all__ = ["HarnessPreflightOperator", "TrainingRequest", "job_from_dag", "training_request"]


def __getattr__(name: str) -> Any:
    if name == "HarnessPreflightOperator":  # a subclass of Airflow's BaseOperator: imports Airflow
        from harness.airflow.operator import HarnessPreflightOperator

        return HarnessPreflightOperator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
