"""The report's tables: run summary, method comparison (with 'when to pick it') and all trials."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from peftplan.reports.advice import when_to_pick
from peftplan.reports.fmt import (
    MISSING,
    fmt_bytes,
    fmt_count,
    fmt_interval,
    fmt_num,
    fmt_params,
    fmt_pct,
    fmt_rate,
    fmt_rate_interval,
    is_missing,
)
from peftplan.reports.frame import STATUS_ORDER, best_trials, confirmed, higher_is_better, search_trials

if TYPE_CHECKING:
    import pandas as pd

    from peftplan.reports.rundir import Run

MAIN_STATUSES = ["success", "pruned", "oom", "timeout", "failed"]


@dataclass
class Summary:
    """What the run was and how it went."""

    title: str
    models: list[str]
    tasks: list[str]
    suites: list[tuple[str, str]]  # (name, hash)
    devices: list[str]
    started: str | None
    finished: str | None
    status_counts: dict[str, int]
    probes: list[str]
    metric_name: str
    higher_is_better: bool
    best_configs: dict[str, dict[str, Any]]  # method -> searched params of its best trial
    run_dirs: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def trials(self) -> int:
        return sum(self.status_counts.values())


def _unique(values: Any) -> list[str]:
    return [str(v) for v in dict.fromkeys(values) if v is not None and v == v]


def summarize(run: Run, frame: pd.DataFrame) -> Summary:
    counts = {s: 0 for s in MAIN_STATUSES}
    for status, n in frame["status"].value_counts().items():
        counts[str(status)] = int(n)
    counts = {s: counts[s] for s in sorted(counts, key=STATUS_ORDER.index)}
    metric_name = next(iter(_unique(frame["metric_name"])), "task metric")
    best = best_trials(frame)
    finished = [f for f in frame["finished"] if isinstance(f, str)]
    models = _unique(frame["model"])
    return Summary(
        title=f"{', '.join(_unique(frame['suite']))} on {', '.join(models)}",
        models=models,
        tasks=_unique(frame["task"]),
        suites=list(dict.fromkeys(zip(frame["suite"], frame["suite_hash"], strict=True))),
        devices=_unique(frame["device"]),
        started=min(frame["started"]) if len(frame) else None,
        finished=max(finished) if finished else None,
        status_counts=counts,
        probes=_unique(frame["probe"]),
        metric_name=metric_name,
        higher_is_better=higher_is_better(metric_name),
        best_configs={row.method: row.params for row in best.itertuples()},
        run_dirs=[str(d.path) for d in run.dirs],
        notes=list(run.notes),
    )


def _status_line(statuses: pd.Series) -> str:
    counts = statuses.value_counts()
    ok = int(counts.get("success", 0))
    rest = [f"{int(counts[s])} {s}" for s in STATUS_ORDER if s != "success" and s in counts]
    return f"{ok}/{len(statuses)} ok" + (f" ({', '.join(rest)})" if rest else "")


def method_comparison(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per method, from its best successful trial; methods that never succeeded stay listed.

    Columns hold raw numbers (bytes, tokens/s, counts); `display_comparison` formats them.
    """
    import pandas as pd

    best = best_trials(frame).set_index("method")
    columns = ["trial", "metric_name", "metric", "metric_ci", "forgetting", "forgetting_ci", "peak", "predicted",
               "pred_err_pct", "pred_error", "train_tps", "train_tps_ci", "decode_base", "decode_base_ci",
               "decode_merged", "decode_merged_ci", "decode_unmerged", "decode_unmerged_ci", "quantized",
               "adapter_bytes", "trainable", "params"]
    confirmations = confirmed(frame).set_index("method")
    rows = []
    for method, group in frame.groupby("method", sort=False):
        row: dict[str, Any] = {"method": method, "trials": _status_line(search_trials(group)["status"])}
        for col in columns:
            row[col] = best.at[method, col] if method in best.index else None
        for col in confirmations.columns:
            row[col] = confirmations.at[method, col] if method in confirmations.index else None
        if is_missing(row["trainable"]):  # counts are known even when no trial succeeded
            row["trainable"] = group["trainable"].dropna().iloc[0] if group["trainable"].notna().any() else None
        rows.append(row)
    comp = pd.DataFrame(rows)
    direction = higher_is_better(next((n for n in comp["metric_name"] if isinstance(n, str)), None))
    comp["when"] = comp["method"].map(when_to_pick(comp, higher_is_better=direction))
    # Confirmed methods first, ranked on their mean over seeds (a search's best trial is its luckiest one);
    # then the others by that best trial.
    sign = -1 if direction else 1
    unconfirmed = comp["confirmed_mean"].isna()
    ranked = comp["confirmed_mean"].where(~unconfirmed, comp["metric"]).astype(float) * sign
    return comp.assign(_confirmed=unconfirmed, _rank=ranked).sort_values(
        ["_confirmed", "_rank"], na_position="last", kind="stable").drop(
        columns=["_confirmed", "_rank"]).reset_index(drop=True)


COMPARISON_HEADERS = {
    "method": "method", "confirmed": "{metric} confirmed (mean ± sd)", "metric": "{metric}",
    "forgetting": "forgetting (Δ loss)", "peak": "peak memory",
    "predicted": "planner (error)", "train_tps": "train tok/s", "decode_merged": "decode tok/s merged",
    "decode_unmerged": "decode tok/s unmerged", "adapter_bytes": "adapter size", "trainable": "trainable params",
    "trials": "trials", "when": "when to pick it",
}


def display_comparison(comp: pd.DataFrame, metric_name: str) -> pd.DataFrame:
    """The comparison as strings under human headers (for Markdown and HTML alike)."""
    import pandas as pd

    def predicted(row: Any) -> str:
        if is_missing(row["predicted"]):
            return f"{MISSING} (planner failed)" if isinstance(row.get("pred_error"), str) else MISSING
        return f"{fmt_bytes(row['predicted'])} ({fmt_pct(row['pred_err_pct'])})"

    def ci(column: str, shown: Any) -> Any:
        """The value with its interval: [low, high] for scores, ±% for rates."""
        def cell(row: Any) -> str:
            return shown(row[column], row[f"{column}_ci"] if f"{column}_ci" in row else None)
        return comp.apply(cell, axis=1) if len(comp) else comp[column]

    out = pd.DataFrame({
        "method": comp["method"],
        "metric": ci("metric", lambda v, i: fmt_interval(v, i, fmt_num)),
        "forgetting": ci("forgetting", lambda v, i: fmt_interval(v, i, lambda x: fmt_num(x, 2))),
        "peak": comp["peak"].map(fmt_bytes),
        "predicted": comp.apply(predicted, axis=1) if len(comp) else comp["predicted"],
        "train_tps": ci("train_tps", fmt_rate_interval),
        "decode_merged": ci("decode_merged", fmt_rate_interval),
        "decode_unmerged": ci("decode_unmerged", fmt_rate_interval),
        "adapter_bytes": comp["adapter_bytes"].map(fmt_bytes),
        "trainable": comp["trainable"].map(fmt_count),
        "trials": comp["trials"],
        "when": comp["when"],
    })
    if "confirmed_mean" in comp and comp["confirmed_mean"].notna().any():
        out.insert(1, "confirmed", comp.apply(fmt_confirmed, axis=1))
    return out.rename(columns={k: v.format(metric=metric_name) for k, v in COMPARISON_HEADERS.items()})


def fmt_confirmed(row: Any) -> str:
    """`0.861 ± 0.012 (3 seeds of #1)`: the confirmed configuration's mean and sd over its seeds."""
    if is_missing(row.get("confirmed_mean")):
        return MISSING
    n, trial = int(row["confirmed_n"]), int(row["confirmed_trial"])
    sd = "" if is_missing(row.get("confirmed_sd")) else f" ± {fmt_num(row['confirmed_sd'], 2)}"
    return f"{fmt_num(row['confirmed_mean'])}{sd} ({n} seed{'s' if n != 1 else ''} of #{trial})"


TRIAL_HEADERS = {
    "run": "run", "method": "method", "trial": "#", "status": "status", "metric": "{metric}",
    "forgetting": "forgetting", "peak": "peak memory", "pred_err_pct": "planner error", "train_tps": "train tok/s",
    "decode_unmerged": "decode tok/s", "params": "params",
}


def display_trials(frame: pd.DataFrame, metric_name: str, *, with_run: bool = False) -> pd.DataFrame:
    """Every trial as strings; failed trials show their error in place of params' tail."""
    import pandas as pd

    def params(row: Any) -> str:
        text = fmt_params(row["params"])
        if not is_missing(row.get("confirm_of")):
            seed = "—" if is_missing(row.get("seed")) else int(row["seed"])
            text = f"confirms #{int(row['confirm_of'])} (seed {seed}) {text}"
        return f"{text} | {row['error']}" if isinstance(row["error"], str) and row["error"] else text

    def number(row: Any) -> str:
        return str(row["trial"]) if is_missing(row.get("confirm_of")) else f"confirm {row['trial']}"

    def peak(row: Any) -> str:
        """The trial's peak; a multi-GPU trial's is its highest rank's, followed by every rank's own."""
        ranks = row.get("rank_peaks")
        if not isinstance(ranks, list) or len(ranks) < 2:
            return fmt_bytes(row["peak"])
        return f"{fmt_bytes(row['peak'])} (ranks: {' / '.join(fmt_bytes(v) for v in ranks)})"

    out = pd.DataFrame({
        "run": frame["run"],
        "method": frame["method"],
        "trial": frame.apply(number, axis=1) if len(frame) else frame["trial"].map(str),
        "status": frame["status"],
        "metric": frame["metric"].map(fmt_num),
        "forgetting": frame["forgetting"].map(lambda v: fmt_num(v, 2)),
        "peak": frame.apply(peak, axis=1),
        "pred_err_pct": frame.apply(lambda r: "planner failed" if is_missing(r["pred_err_pct"])
                                    and isinstance(r["pred_error"], str) else fmt_pct(r["pred_err_pct"]), axis=1),
        "train_tps": frame["train_tps"].map(fmt_rate),
        "decode_unmerged": frame["decode_unmerged"].map(fmt_rate),
        "params": frame.apply(params, axis=1),
    })
    if not with_run:
        out = out.drop(columns="run")
    return out.rename(columns={k: v.format(metric=metric_name) for k, v in TRIAL_HEADERS.items()})
