"""Following a SageMaker training job when the harness is asked to stop (SIGTERM, Ctrl-C, SIGHUP).

While the rung follows the job, a signal only sets a flag: the API call in flight finishes, the
wait between polls ends within a fraction of a second, the job is stopped with
``StopTrainingJob`` and then ``Interrupted`` (exit 128 + the signal) is raised. No AWS here: the
SageMaker client and the log follower are stand-ins.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from harness.backends import training_job
from harness.runtime import interrupts
from harness.runtime.interrupts import Interrupted

pytestmark = pytest.mark.unit


class _Record:
    def __init__(self) -> None:
        self.facts: dict[str, Any] = {}

    def set_fact(self, key: str, value: Any) -> None:
        self.facts[key] = value


class _Follower:
    def __init__(self) -> None:
        self.record = _Record()
        self.polls = 0

    def poll(self) -> int:
        self.polls += 1
        return 0


class _SageMaker:
    """A job that trains for ever; ``on_describe`` runs inside the first ``DescribeTrainingJob``."""

    def __init__(self, on_describe: Any = None) -> None:
        self.calls: list[str] = []
        self.on_describe = on_describe

    def describe_training_job(self, TrainingJobName: str) -> dict[str, Any]:  # noqa: N803 - boto3's name
        self.calls.append("describe")
        if self.on_describe is not None:
            self.on_describe, action = None, self.on_describe
            action()
        return {"TrainingJobName": TrainingJobName, "TrainingJobStatus": "InProgress"}

    def stop_training_job(self, TrainingJobName: str) -> dict[str, Any]:  # noqa: N803
        self.calls.append("stop")
        return {}


@pytest.fixture
def signals() -> Iterator[None]:
    """The CLI's handlers, from default dispositions (pytest may run with SIGTERM ignored)."""
    previous = {signum: signal.signal(signum, signal.SIG_DFL) for signum in interrupts.SIGNALS}
    try:
        with interrupts.stopping_on_signals():
            yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@pytest.mark.usefixtures("signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_between_polls_stops_the_job_then_raises(signum: int) -> None:
    sagemaker, follower = _SageMaker(), _Follower()
    threading.Timer(0.5, os.kill, (os.getpid(), signum)).start()
    started = time.monotonic()
    with pytest.raises(Interrupted) as raised:
        training_job.follow(sagemaker, follower, "job", poll_s=60, deadline=time.monotonic() + 600)  # type: ignore[arg-type]
    assert raised.value.signum == signum and raised.value.exit_code == 128 + signum
    assert time.monotonic() - started < 5  # the 60 s wait between polls ends at once
    assert sagemaker.calls == ["describe", "stop"]
    assert follower.record.facts["stop_training_job"] == "sent: the harness was stopped by a signal"
    assert not interrupts.requested()


@pytest.mark.usefixtures("signals")
def test_a_signal_inside_an_api_call_lets_it_finish() -> None:
    sagemaker = _SageMaker(on_describe=lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(0.2)))
    follower = _Follower()
    with pytest.raises(Interrupted):
        training_job.follow(sagemaker, follower, "job", poll_s=60, deadline=time.monotonic() + 600)  # type: ignore[arg-type]
    assert sagemaker.calls == ["describe", "stop"] and follower.polls == 1  # the poll after the call ran too


@pytest.mark.usefixtures("signals")
def test_a_signal_while_the_job_was_submitted_stops_it_before_any_poll() -> None:
    """The rung defers signals from submission on: one that came while ``train()`` submitted the
    job stops that job as soon as it is known."""
    sagemaker, follower = _SageMaker(), _Follower()
    with pytest.raises(Interrupted), interrupts.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert interrupts.requested()
        training_job.follow(sagemaker, follower, "job", poll_s=60, deadline=time.monotonic() + 600)  # type: ignore[arg-type]
    assert sagemaker.calls == ["stop"]


def test_a_stop_that_fails_is_said_in_the_record_and_the_error_goes_on() -> None:
    class Broken(_SageMaker):
        def describe_training_job(self, TrainingJobName: str) -> dict[str, Any]:  # noqa: N803
            raise RuntimeError("throttled")

        def stop_training_job(self, TrainingJobName: str) -> dict[str, Any]:  # noqa: N803
            raise RuntimeError("denied")

    follower = _Follower()
    with pytest.raises(RuntimeError, match="throttled"):
        training_job.follow(Broken(), follower, "job", poll_s=1, deadline=time.monotonic() + 600)  # type: ignore[arg-type]
    assert follower.record.facts["stop_training_job"] == (
        "failed (the harness could not follow the job): RuntimeError: denied"
    )
