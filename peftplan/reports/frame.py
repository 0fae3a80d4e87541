"""Trial results -> one flat pandas DataFrame, the single source every table and plot is drawn from."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from peftplan.reports.rundir import method_key
from peftplan.results import TrialResult, TrialStatus

if TYPE_CHECKING:
    import pandas as pd

    from peftplan.reports.rundir import Run

# Metric names where lower is better; every other task metric (accuracy, exact match, f1...) is maximised.
_LOWER_IS_BETTER = re.compile(r"loss|perplexity|ppl|error|wer|cer|mse|mae", re.IGNORECASE)
RANK_KEYS = ("rank", "r", "lora_r")
STATUS_ORDER = [s.value for s in TrialStatus]


def higher_is_better(metric_name: str | None) -> bool:
    return not (metric_name and _LOWER_IS_BETTER.search(metric_name))


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"method": {"rank": 8}}` -> `{"method.rank": 8}`; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _row(result: TrialResult, origin: str) -> dict[str, Any]:
    m, mem, lat, fg = result.metrics, result.memory, result.latency, result.forgetting
    peak = mem.peak_allocated if mem else None
    predicted = (mem.predicted or {}).get("peak_allocated") if mem else None
    err = 100.0 * (predicted - peak) / peak if peak and predicted is not None else None
    flat = flatten(result.config)
    rank = next((v for k, v in flat.items() if k.rsplit(".", 1)[-1] in RANK_KEYS and isinstance(v, int | float)), None)
    quant = next((v for k, v in flat.items() if k.rsplit(".", 1)[-1] == "quant"), None)
    return {
        "run": origin, "study": result.study_name, "method": method_key(result), "base_method": result.method,
        "trial": result.trial_number, "sampled": dict(result.params),
        "confirm_of": result.confirm_of, "seed": m.seed,  # a confirmation run: the search trial it re-runs
        "status": result.status.value, "metric_name": m.task_metric_name, "metric": m.task_metric,
        "metric_ci": m.task_metric_ci,
        "eval_loss": m.eval_loss, "forgetting": fg.delta if fg else None, "probe": fg.probe if fg else None,
        "forgetting_ci": fg.delta_ci if fg else None,
        "quantized": quant not in (None, "none"),  # a merged adapter then dequantizes: no decode parity with the base
        "peak": peak, "predicted": predicted, "pred_err_pct": err, "mem_source": mem.source if mem else None,
        "rank_peaks": [r.peak_allocated for r in mem.ranks] if mem and mem.ranks else None,  # multi-GPU trials
        "engine": mem.predicted_engine if mem else None,
        "pred_error": mem.prediction_error if mem else None,  # the planner failed: why there is no prediction
        "train_tps": m.train_tokens_per_s, "train_tps_ci": m.train_tokens_per_s_ci,
        "decode_base": lat.decode_base if lat else None, "decode_merged": lat.decode_merged if lat else None,
        "decode_unmerged": lat.decode_unmerged if lat else None,
        "decode_base_ci": lat.decode_base_ci if lat else None, "decode_merged_ci": lat.decode_merged_ci if lat else None,
        "decode_unmerged_ci": lat.decode_unmerged_ci if lat else None,
        "adapter_bytes": m.adapter_bytes, "trainable": m.trainable_params, "total_params": m.total_params,
        "wall_s": m.wall_time_s, "rank": rank, "config": flat, "config_hash": result.config_hash,
        "error": result.error, "started": result.provenance.started_at, "finished": result.provenance.finished_at,
        "device": result.provenance.device_name, "model": result.model, "task": result.task,
        "suite": result.suite_name, "suite_hash": result.suite_hash,
    }


def searched_params(configs: list[dict[str, Any]], others: list[dict[str, Any]]) -> list[str]:
    """The config keys worth showing for one method's trials: those that vary between its trials.

    With a single trial nothing varies; then the keys where it differs from other methods' trials.
    """
    keys = list(dict.fromkeys(k for c in configs for k in c))
    varying = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    if varying or not configs:
        return varying
    shared = {k for k in keys if others and all(repr(o.get(k)) == repr(configs[0].get(k)) for o in others)}
    return [k for k in keys if k not in shared and k.rsplit(".", 1)[-1] not in ("name", "method")]


def _short_names(keys: list[str]) -> dict[str, str]:
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def trials_frame(run: Run) -> pd.DataFrame:
    """One row per trial; `params` holds each trial's searched parameters (short name -> value).

    The params are the ones Optuna sampled, as the result file records them; for results without
    them, the config keys that vary between the method's trials.
    """
    import pandas as pd

    rows = [_row(r, run.origin(r)) for r in run.results]
    frame = pd.DataFrame(rows)
    params: list[dict[str, Any]] = [{} for _ in rows]
    for method in dict.fromkeys(frame["method"]):
        mine = [i for i, row in enumerate(rows) if row["method"] == method]
        others = [row["config"] for row in rows if row["method"] != method]
        keys = searched_params([rows[i]["config"] for i in mine], others)
        names = _short_names(keys)
        for i in mine:
            sampled = rows[i]["sampled"]
            params[i] = sampled or {names[k]: rows[i]["config"][k] for k in keys if k in rows[i]["config"]}
    frame["params"] = params
    return frame


def search_trials(frame: pd.DataFrame) -> pd.DataFrame:
    """The search's own trials: confirmation runs (`search.confirm`) left out."""
    return frame[frame["confirm_of"].isna()] if "confirm_of" in frame else frame


def best_trials(frame: pd.DataFrame) -> pd.DataFrame:
    """Per method, its best successful search trial by task metric (methods without one are left out)."""
    frame = search_trials(frame)
    ok = frame[(frame["status"] == TrialStatus.SUCCESS.value) & frame["metric"].notna()]
    picks = []
    for _method, group in ok.groupby("method", sort=False):
        ascending = not higher_is_better(group["metric_name"].iloc[0])
        picks.append(group.sort_values(["metric", "trial"], ascending=[ascending, True]).index[0])
    return ok.loc[picks]


def confirmed(frame: pd.DataFrame) -> pd.DataFrame:
    """Per method, its best confirmed configuration: the mean, sd and 95% t-interval of the task metric over the
    confirmation runs' seeds, for the search trial whose mean is best (`search.confirm` re-runs the top k)."""
    import statistics

    import pandas as pd

    from peftplan.stats import t_interval

    columns = ["method", "confirmed_mean", "confirmed_sd", "confirmed_n", "confirmed_trial", "confirmed_ci"]
    if "confirm_of" not in frame:
        return pd.DataFrame(columns=columns)
    runs = frame[frame["confirm_of"].notna() & (frame["status"] == TrialStatus.SUCCESS.value) & frame["metric"].notna()]
    rows = []
    for method, group in runs.groupby("method", sort=False):
        sign = 1.0 if higher_is_better(group["metric_name"].iloc[0]) else -1.0
        configs = []
        for trial, seeds in group.groupby("confirm_of", sort=True):
            values = [float(v) for v in seeds["metric"]]
            found = t_interval(values)
            configs.append({"method": method, "confirmed_mean": statistics.fmean(values),
                            "confirmed_sd": statistics.stdev(values) if len(values) > 1 else None,
                            "confirmed_n": len(values), "confirmed_trial": int(trial),
                            "confirmed_ci": [found[1], found[2]] if found else None})
        rows.append(max(configs, key=lambda c: (sign * c["confirmed_mean"], -c["confirmed_trial"])))
    return pd.DataFrame(rows, columns=columns)
