"""A DAG that trains the reference job (scenarios/ddp_csv) from a PythonOperator calling boto3, and
checks it first: the pre-flight task calls the training task's callable with boto3 stubbed,
captures the request it gives create_training_job (nothing reaches AWS), climbs the harness's
ladder with it on the worker and fails the DAG run when the job departs.

From the command line, the same request: ``harness ladder --from-airflow
examples/airflow/python_boto3.py --task train --source-dir scenarios/ddp_csv/src``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

from harness.airflow import HarnessPreflightOperator

REFERENCE = Path(__file__).resolve().parents[2] / "scenarios" / "ddp_csv"
# On SageMaker the data is an S3 prefix; here it is the reference job's own data as a file:// URI
# (what SageMaker local mode reads), so that the example runs without S3.
TRAIN_DATA = os.environ.get("DDP_CSV_TRAIN_DATA", REFERENCE.joinpath("data").as_uri())


def submit_training(ts_nodash: str) -> str:
    """Submit the training job and wait for it; Airflow passes ``ts_nodash`` from the run's context."""
    import boto3

    name = f"ddp-csv-{ts_nodash}"
    sagemaker = boto3.client("sagemaker")
    # As the reference job's YAML: no TrainingImage (container rungs build a python3 + torch image;
    # on SageMaker, a PyTorch deep learning container) and no OutputDataConfig, so that the example
    # needs no registry and no S3 (with an S3OutputPath, every rung uploads its artifacts there).
    sagemaker.create_training_job(
        TrainingJobName=name,
        RoleArn="arn:aws:iam::111122223333:role/SageMakerExecution",
        AlgorithmSpecification={
            "TrainingInputMode": "File",
            "MetricDefinitions": [{"Name": "train:loss", "Regex": r"step=\d+ loss=([0-9.eE+-]+)"}],
        },
        HyperParameters={
            "epochs": "4",
            "batch-size": "16",
            "learning-rate": "0.05",
            "shuffle": "true",
            "sagemaker_program": "train.py",
            "sagemaker_submit_directory": "s3://example-ml-bucket/ddp-csv/code/sourcedir.tar.gz",
            "sagemaker_torch_distributed_enabled": "true",
            "sagemaker_mpi_num_of_processes_per_host": "2",
        },
        InputDataConfig=[
            {
                "ChannelName": "train",
                "ContentType": "text/csv",
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": TRAIN_DATA,
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
            }
        ],
        ResourceConfig={"InstanceType": "ml.c5.xlarge", "InstanceCount": 2, "VolumeSizeInGB": 30},
        StoppingCondition={"MaxRuntimeInSeconds": 600},
    )
    sagemaker.get_waiter("training_job_completed_or_stopped").wait(TrainingJobName=name)
    status = sagemaker.describe_training_job(TrainingJobName=name)["TrainingJobStatus"]
    if status != "Completed":
        raise RuntimeError(f"training job {name} ended {status}")
    return name


with DAG(
    dag_id="ddp_csv_python_boto3",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["harness", "example"],
) as dag:
    preflight = HarnessPreflightOperator(
        task_id="preflight",
        training_task_id="train",
        source_dir=str(REFERENCE / "src"),  # the checkout of the code that is on S3
        rungs=["single", "local"],
    )
    train = PythonOperator(task_id="train", python_callable=submit_training)
    preflight >> train

if __name__ == "__main__":
    # `python <this file>` (with AIRFLOW__CORE__DAGS_FOLDER naming this directory, and a metadata
    # database: `airflow db migrate`) runs the DAG once as Airflow's docs show, the pre-flight task
    # for real; `train` is marked successful instead of submitting to SageMaker. Exit 1 when the run
    # failed (the pre-flight task found the job departing).
    run = dag.test(mark_success_pattern="^train$")
    raise SystemExit(0 if run.state == "success" else 1)
