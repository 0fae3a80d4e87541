"""A study's trials as a work queue, so that several runners together run each trial exactly once.

When a study is created, every trial it will run is enqueued as WAITING (fixed params where the suite
enqueues some, none otherwise: the sampler then samples at claim time). A runner only ever claims a
WAITING trial; Optuna's RDB storage moves it to RUNNING under a row lock (`SELECT ... FOR UPDATE` on
PostgreSQL), so two runners never get the same one, and no runner creates a trial beyond the count.
A trial whose runner died is queued again by the heartbeat callback with the same params.

The queue is filled once per study: under the study's lock (`harness/studylock.py`), and marked with
`FILLED_ATTR`, so that a starter arriving later (or at the same moment) never fills it again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna


FILLED_ATTR = "peftplan_queue_filled"  # study user attribute: the queue was filled (by whom, when)


def fill_once(study: optuna.Study, target: int, fixed: list[tuple[dict[str, Any], dict[str, Any]]],
              filled_by: str) -> bool:
    """Fill the queue of a study nobody filled yet; True if this call filled it. Call under the study's lock.

    A study that already has trials but no mark (made before the mark existed, or by a starter that died
    mid-fill) is only marked: `top_up` adds whatever it lacks once nothing runs.
    """
    from peftplan.harness.provenance import now_iso

    if study.user_attrs.get(FILLED_ATTR):
        return False
    empty = not study.get_trials(deepcopy=False)
    if empty:
        fill_queue(study, target, fixed)
    study.set_user_attr(FILLED_ATTR, {"by": filled_by, "at": now_iso(), "trials": target if empty else None})
    return empty


def fill_queue(study: optuna.Study, target: int, fixed: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """Enqueue the fixed trials `(params, user_attrs)` in order, then free ones up to `target`."""
    for params, user_attrs in fixed:
        study.enqueue_trial(params, user_attrs=user_attrs)
    for _ in range(max(0, target - len(fixed))):
        study.enqueue_trial({})


def claim(study: optuna.Study) -> optuna.Trial | None:
    """Atomically move one WAITING trial to RUNNING and return it; None when the queue is empty."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    study_id = storage.get_study_id_from_name(study.study_name)
    for waiting in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(waiting._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, waiting._trial_id)
        except UpdateFinishedTrialError:
            continue  # another runner finished it in between
    return None


def top_up(study: optuna.Study, target: int, counted: int, running: int, queued: int) -> int:
    """Enqueue free trials when the study has fewer than `target` counted, running or queued trials.

    This happens when a retried trial ran out of retries, or for a study created before the queue was
    filled up front. Returns how many were added.
    """
    missing = target - counted - running - queued
    for _ in range(max(0, missing)):
        study.enqueue_trial({})
    return max(0, missing)
