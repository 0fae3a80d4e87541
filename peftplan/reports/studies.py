"""Per-method views of the run's Optuna studies: optimization history and parameter importances.

A bench may keep one study per method or one study for all methods; either way each method's
trials are picked out (by the trial's `method` user attribute or param, else by the trial numbers
in its result files) and read, never written.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftplan.reports.chart import Chart, Series, slug

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from peftplan.results import TrialResult

# fANOVA fits a random forest to (params -> objective) over the completed trials. With a handful of trials
# one lucky trial decides which parameter "matters", so below this the chart is left out and Notes say why.
MIN_TRIALS_FOR_IMPORTANCE = 10


@dataclass
class StudyView:
    """One method's part of a study."""

    method: str
    study_name: str
    maximize: bool
    objective: str
    history: list[tuple[int, float]] = field(default_factory=list)  # (trial number, value) of complete trials
    states: dict[str, int] = field(default_factory=dict)
    importances: dict[str, float] = field(default_factory=dict)
    note: str = ""  # why importances are missing, when they are


def _method_trials(trials: list[FrozenTrial], method: str, numbers: set[int], shared: bool) -> list[FrozenTrial]:
    if not shared:
        return trials
    tagged = [t for t in trials if t.user_attrs.get("method", t.params.get("method")) is not None]
    if tagged:
        return [t for t in tagged if t.user_attrs.get("method", t.params.get("method")) == method]
    return [t for t in trials if t.number in numbers]


def _importances(trials: list[FrozenTrial], maximize: bool,
                 min_trials: int = MIN_TRIALS_FOR_IMPORTANCE) -> tuple[dict[str, float], str]:
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState

    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if len(complete) < min_trials:
        return {}, (f"parameter importances left out: {len(complete)} completed trials, and fANOVA needs at least "
                    f"{min_trials} (with fewer, its forest ranks the parameters by a lucky trial or two)")
    # A throw-away in-memory copy, so importances see exactly this method's trials.
    study = optuna.create_study(direction="maximize" if maximize else "minimize")
    study.add_trials(complete)
    try:
        raw = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as exc:  # e.g. every parameter fixed
        return {}, f"parameter importances unavailable: {exc}"
    if not raw:
        return {}, "no searched parameter varies between completed trials"
    return {k: float(v) for k, v in raw.items()}, ""


def load_study_views(storages: list[str], results: list[TrialResult], *,
                     objective: str = "objective") -> tuple[list[StudyView], list[str]]:
    """Read each method's trials from the first storage that holds its study.

    Args:
        storages: Optuna storage URLs, searched in order.
        results: The run's trial results (they name each trial's study).
        objective: The objective's name where a study does not record one.

    Returns:
        The views (one per method and study) and notes on studies that could not be found or read.
    """
    import optuna

    from peftplan.reports.rundir import method_key

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    wanted: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for r in results:
        wanted[r.study_name][method_key(r)].add(r.trial_number)
    notes: list[str] = []
    views: list[StudyView] = []
    opened: dict[str, tuple[Any, list[str]]] = {}  # url -> (storage, its study names)
    for url in storages:
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
            notes.append(f"no Optuna storage at {url}: no such file")  # optuna would create an empty one
            continue
        try:
            from peftplan.storage_url import normalize_storage_url

            storage = optuna.storages.get_storage(normalize_storage_url(url))  # an installed driver for postgresql://
            opened[url] = (storage, optuna.study.get_all_study_names(storage=storage))
        except Exception as exc:  # an unreachable database must not stop the report
            notes.append(f"could not read Optuna storage {url}: {type(exc).__name__}: {exc}")
    for study_name, methods in wanted.items():
        found = next((s for s, names in opened.values() if study_name in names), None)
        if found is None:
            if storages:
                notes.append(f"study {study_name!r} not found in {', '.join(storages)}")
            continue
        study = optuna.load_study(study_name=study_name, storage=found)
        if len(study.directions) > 1:
            notes.append(f"study {study_name!r} is multi-objective; history and importances use its first objective")
        maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
        name = str((study.metric_names or [objective])[0] or objective)
        trials = study.get_trials(deepcopy=False)
        if len(study.directions) > 1:
            trials = [_first_objective(t) for t in trials]
        for method, numbers in methods.items():
            mine = _method_trials(trials, method, numbers, shared=len(methods) > 1)
            view = StudyView(method=method, study_name=study_name, maximize=maximize, objective=name)
            for t in mine:
                view.states[t.state.name.lower()] = view.states.get(t.state.name.lower(), 0) + 1
                if t.state.name == "COMPLETE" and t.value is not None:
                    view.history.append((t.number, float(t.value)))
            view.importances, view.note = _importances(mine, maximize)
            views.append(view)
    if not storages:
        notes.append("no Optuna storage found (no study.db; pass --storage URL): history and importances omitted")
    return views, notes


def _first_objective(trial: FrozenTrial) -> FrozenTrial:
    import copy

    clone = copy.copy(trial)
    if trial.values:
        clone.values = [trial.values[0]]
    return clone


def history_chart(view: StudyView) -> Chart:
    """Objective per completed trial, with the best value so far."""
    xs = [n for n, _ in view.history]
    ys = [v for _, v in view.history]
    best: list[Any] = []
    for v in ys:
        best.append(v if not best else (max if view.maximize else min)(best[-1], v))
    return Chart(
        key=f"history-{slug(view.method)}", title=f"{view.method}: optimization history",
        x_title="trial number", y_title=view.objective, group="optuna",
        series=[Series(name="objective", x=xs, y=ys, color_key=view.method),
                Series(name="best so far", x=xs, y=best, kind="lines", emphasis=True, step=True)],
        x_integer=True,
        caption=f"Study {view.study_name!r}: " + ", ".join(f"{n} {s}" for s, n in sorted(view.states.items())),
    )


def importance_chart(view: StudyView) -> Chart:
    """fANOVA parameter importances (Optuna's default evaluator, seeded)."""
    ordered = sorted(view.importances.items(), key=lambda kv: -kv[1])
    return Chart(
        key=f"importance-{slug(view.method)}", title=f"{view.method}: parameter importances",
        x_title="importance (fANOVA)", y_title="", group="optuna", horizontal=True,
        series=[Series(name="importance", x=[v for _, v in ordered], y=[k for k, _ in ordered], kind="bar",
                       color_key=view.method)],
        caption=f"How much of the objective's variance each searched parameter explains, over "
                f"{len(view.history)} completed trials.",
    )


def study_charts(views: list[StudyView]) -> tuple[list[Chart], list[str]]:
    charts: list[Chart] = []
    notes: list[str] = []
    for view in views:
        if view.history:
            charts.append(history_chart(view))
        else:
            notes.append(f"{view.method}: no completed trial in study {view.study_name!r}")
        if view.importances:
            charts.append(importance_chart(view))
        elif view.note:
            notes.append(f"{view.method}: {view.note}")
    return charts, notes
