"""``streaming_supervisor`` against a real (ephemeral) Dagster instance."""

from __future__ import annotations

import json

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test

from journey_assets.assets.streaming import STREAMING_JOB
from journey_assets.sensors import (
    AUTO_RETRY_RUN_ID_TAG,
    BACKOFF_BASE_S,
    BACKOFF_MAX_S,
    WILL_RETRY_TAG,
    FinishedRun,
    backoff_seconds,
    decide,
    streaming_supervisor,
)


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def tick(instance: dg.DagsterInstance, cursor: str | None = None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    return streaming_supervisor.evaluate_tick(context)


def fail_streaming_runs(instance: dg.DagsterInstance, n: int) -> None:
    """Real failed runs of a job named like the streaming job (the op raises)."""
    @dg.op
    def crash() -> None:
        raise RuntimeError("kafka unreachable")

    @dg.job(name=STREAMING_JOB)
    def failing_streaming_job() -> None:
        crash()

    for _ in range(n):
        result = failing_streaming_job.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success


def test_launches_one_run_when_idle(instance) -> None:
    result = tick(instance)
    assert len(result.run_requests) == 1
    assert result.run_requests[0].run_key == f"{STREAMING_JOB}-after-none"
    # A second tick before the run shows up asks for the same run_key: Dagster dedups it.
    assert tick(instance).run_requests[0].run_key == result.run_requests[0].run_key


@pytest.mark.parametrize("status", [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTED,
                                    dg.DagsterRunStatus.STARTING])
def test_does_not_launch_while_a_run_is_active(instance, status) -> None:
    run = create_run_for_test(instance, job_name=STREAMING_JOB, status=status)
    result = tick(instance)
    assert result.run_requests == []
    assert run.run_id in result.skip_message


def test_does_not_launch_while_a_run_retry_is_queued(instance) -> None:
    """A failed run that Dagster's run retries will relaunch: the retry is the next run, the
    sensor waits; once the retry exists (and ended), the sensor decides again."""
    fail_streaming_runs(instance, 1)
    [failed] = instance.get_runs(dg.RunsFilter(job_name=STREAMING_JOB))
    instance.add_run_tags(failed.run_id, {WILL_RETRY_TAG: "true"})
    result = tick(instance)
    assert result.run_requests == []
    assert f"run {failed.run_id} failed and Dagster's run retry will relaunch it" in (
        result.skip_message)
    # The retry was launched (and has ended): the sensor goes back to its usual rules.
    instance.add_run_tags(failed.run_id, {AUTO_RETRY_RUN_ID_TAG: "retry-run"})
    assert "backing off after 1 consecutive failure(s)" in tick(instance).skip_message


def test_runs_of_other_jobs_do_not_count(instance) -> None:
    create_run_for_test(instance, job_name="some_batch_job", status=dg.DagsterRunStatus.STARTED)
    assert len(tick(instance).run_requests) == 1


def test_backs_off_after_consecutive_failures(instance) -> None:
    fail_streaming_runs(instance, 3)
    result = tick(instance)
    assert result.run_requests == []
    assert "backing off after 3 consecutive failure(s)" in result.skip_message
    cursor = json.loads(result.cursor)
    assert cursor["failures"] == 3
    last_end = max(r.end_time for r in instance.get_run_records(
        dg.RunsFilter(job_name=STREAMING_JOB)))
    assert cursor["next_attempt_at"] == pytest.approx(last_end + 4 * BACKOFF_BASE_S, abs=1.0)


def test_backoff_doubles_is_capped_and_resets_after_success() -> None:
    assert [backoff_seconds(n) for n in range(4)] == [0, BACKOFF_BASE_S, 2 * BACKOFF_BASE_S,
                                                      4 * BACKOFF_BASE_S]
    assert backoff_seconds(50) == BACKOFF_MAX_S
    failed = [FinishedRun(f"f{i}", True, 1000.0 - i) for i in range(2)]
    # Two failures, the last at t=1000: wait 2*base.
    assert not decide([], failed, now=1000.0 + 2 * BACKOFF_BASE_S - 1).launch
    later = decide([], failed, now=1000.0 + 2 * BACKOFF_BASE_S + 1)
    assert later.launch and later.run_key == f"{STREAMING_JOB}-after-f0"
    # A success more recent than the failures: relaunch at once.
    recovered = [FinishedRun("ok", False, 1001.0), *failed]
    assert decide([], recovered, now=1001.5).launch
    assert decide([], recovered, now=1001.5).cursor["failures"] == 0
    # Active run wins over everything.
    assert not decide(["r1"], failed, now=10**9).launch
