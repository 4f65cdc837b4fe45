"""``streaming_supervisor``: keep exactly one run of ``streaming_job`` alive.

* a run queued, starting, started or canceling -> do nothing (never a duplicate);
* a failed run that Dagster's run retries will relaunch (tagged ``dagster/will_retry`` and not
  yet ``dagster/auto_retry_run_id``) -> do nothing: the retry is the next run;
* none -> launch one, with a run_key derived from the latest run of the job, so two ticks that
  race before the new run is visible still yield a single run;
* after consecutive failures, wait ``base * 2**(failures-1)`` seconds (capped) after the last
  failure before relaunching; the failure count and the next allowed launch are kept in the
  sensor cursor (visible in the UI) and recomputed from the run history each tick.
Stopping the streaming run for good = turning this sensor off first.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import dagster as dg

from journey_assets.assets.streaming import STREAMING_JOB

ACTIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING,
]
FINISHED_STATUSES = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE,
                     dg.DagsterRunStatus.CANCELED]
BACKOFF_BASE_S = 30.0
BACKOFF_MAX_S = 30 * 60.0
HISTORY = 20
#: Tags the run-retry daemon sets on a failed run: it will be retried / the retry's run id.
WILL_RETRY_TAG = "dagster/will_retry"
AUTO_RETRY_RUN_ID_TAG = "dagster/auto_retry_run_id"


@dataclass(frozen=True)
class FinishedRun:
    run_id: str
    failed: bool
    ended_at: float
    #: Dagster's run retries will relaunch it and have not yet.
    retry_pending: bool = False


@dataclass(frozen=True)
class Decision:
    launch: bool
    reason: str
    run_key: str | None
    cursor: dict


def backoff_seconds(failures: int, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_MAX_S) -> float:
    return 0.0 if failures <= 0 else min(cap, base * 2 ** (failures - 1))


def decide(active_run_ids: list[str], finished: list[FinishedRun], now: float,
           base: float = BACKOFF_BASE_S, cap: float = BACKOFF_MAX_S) -> Decision:
    """Pure decision of one tick; ``finished`` is newest first."""
    if active_run_ids:
        return Decision(False, f"{STREAMING_JOB} run {active_run_ids[0]} is active", None,
                        {"failures": 0, "next_attempt_at": None})
    pending = [run.run_id for run in finished if run.retry_pending]
    if pending:
        return Decision(False, f"{STREAMING_JOB} run {pending[0]} failed and Dagster's run "
                               f"retry will relaunch it", None,
                        {"failures": 0, "next_attempt_at": None})
    failures = 0
    for run in finished:
        if not run.failed:
            break
        failures += 1
    next_at = finished[0].ended_at + backoff_seconds(failures, base, cap) if failures else None
    cursor = {"failures": failures, "next_attempt_at": next_at}
    if next_at is not None and now < next_at:
        return Decision(False, f"backing off after {failures} consecutive failure(s): next "
                               f"launch in {next_at - now:.0f} s", None, cursor)
    run_key = f"{STREAMING_JOB}-after-{finished[0].run_id if finished else 'none'}"
    return Decision(True, "no active streaming run", run_key, cursor)


def _finished_runs(instance: dg.DagsterInstance) -> list[FinishedRun]:
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=STREAMING_JOB, statuses=FINISHED_STATUSES),
        limit=HISTORY, order_by="update_timestamp", ascending=False)
    out = []
    for rec in records:
        ended = rec.end_time or rec.update_timestamp.timestamp()
        run = rec.dagster_run
        failed = run.status == dg.DagsterRunStatus.FAILURE
        retry_pending = (failed and run.tags.get(WILL_RETRY_TAG) == "true"
                         and AUTO_RETRY_RUN_ID_TAG not in run.tags)
        out.append(FinishedRun(run.run_id, failed, ended, retry_pending))
    out.sort(key=lambda r: r.ended_at, reverse=True)
    return out


@dg.sensor(job_name=STREAMING_JOB, minimum_interval_seconds=30,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Keeps exactly one streaming_job run alive, with exponential backoff "
                       "after consecutive failures.")
def streaming_supervisor(context: dg.SensorEvaluationContext):
    active = context.instance.get_runs(
        filters=dg.RunsFilter(job_name=STREAMING_JOB, statuses=ACTIVE_STATUSES), limit=5)
    decision = decide([r.run_id for r in active], _finished_runs(context.instance), time.time())
    context.update_cursor(json.dumps(decision.cursor))
    if not decision.launch:
        return dg.SkipReason(decision.reason)
    context.log.info(f"launching {STREAMING_JOB} ({decision.reason})")
    return dg.RunRequest(run_key=decision.run_key, tags={"journey/supervisor": "streaming"})
