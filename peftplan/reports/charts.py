"""The result charts, built from the trials frame and the method comparison (no rendering here)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from peftplan.reports.chart import Chart, Series, memory_unit
from peftplan.reports.fmt import fmt_params
from peftplan.reports.pareto import pareto_mask

if TYPE_CHECKING:
    import pandas as pd


def _label(row: Any) -> str:
    return f"{row['method']} #{row['trial']} {fmt_params(row['params'])}".strip()


def _per_method(frame: pd.DataFrame, x: str, y: str, *, x_scale: float = 1.0, y_scale: float = 1.0) -> list[Series]:
    series = []
    for method, group in frame.groupby("method", sort=False):
        series.append(Series(
            name=str(method),
            x=[float(v) / x_scale for v in group[x]],
            y=[float(v) / y_scale for v in group[y]],
            text=[_label(r) for _, r in group.iterrows()],
        ))
    return series


def pareto_chart(frame: pd.DataFrame, metric_name: str, higher_is_better: bool) -> Chart:
    """Task metric against measured peak memory for every trial, the non-dominated ones joined."""
    data = frame[frame["metric"].notna() & frame["peak"].notna()]
    unit, scale = memory_unit(list(data["peak"]))
    series = _per_method(data, "peak", "metric", x_scale=scale)
    if len(data):
        on_front = data[pareto_mask(list(data["metric"]), list(data["peak"]), higher_is_better=higher_is_better)]
        on_front = on_front.sort_values("peak")
        series.append(Series(
            name="Pareto front", kind="lines+markers", emphasis=True,
            x=[float(v) / scale for v in on_front["peak"]], y=[float(v) for v in on_front["metric"]],
            text=[_label(r) for _, r in on_front.iterrows()],
        ))
    better = "higher" if higher_is_better else "lower"
    return Chart(
        key="pareto", title=f"{metric_name} against peak memory", x_title=f"measured peak memory ({unit})",
        y_title=metric_name, series=series,
        caption=f"Every trial with a result; the line joins the Pareto front ({better} {metric_name} "
                "for less memory; no other trial beats a front trial on both).",
    )


def forgetting_chart(frame: pd.DataFrame, metric_name: str) -> Chart:
    data = frame[frame["metric"].notna() & frame["forgetting"].notna()]
    probes = ", ".join(str(p) for p in dict.fromkeys(data["probe"].dropna())) or "general text"
    return Chart(
        key="forgetting", title=f"{metric_name} against forgetting", x_title="forgetting (Δ loss on probe)",
        y_title=metric_name, series=_per_method(data, "forgetting", "metric"),
        caption=f"Forgetting is the increase of mean per-token loss on {probes}, adapter enabled against "
                "disabled; left is better.",
    )


def latency_chart(comparison: pd.DataFrame) -> Chart:
    """Decode tokens/s of each method's best trial: base model, adapter merged, adapter unmerged."""
    data = comparison[comparison[["decode_base", "decode_merged", "decode_unmerged"]].notna().any(axis=1)]
    methods = [str(m) for m in data["method"]]
    series = [
        Series(name=label, x=methods, y=[None if v != v else float(v) for v in data[col]], kind="bar")
        for label, col in (("base", "decode_base"), ("merged", "decode_merged"), ("unmerged", "decode_unmerged"))
    ]
    return Chart(
        key="latency", title="decode speed: base, merged, unmerged", x_title="method", y_title="decode tokens/s",
        series=series, x_categorical=True,
        caption="Best trial per method. A missing 'merged' bar means the method cannot merge into the base.",
    )


def memory_prediction_chart(frame: pd.DataFrame) -> Chart:
    data = frame[frame["predicted"].notna() & frame["peak"].notna()]
    unit, scale = memory_unit(list(data["peak"]) + list(data["predicted"]))
    series = _per_method(data, "peak", "predicted", x_scale=scale, y_scale=scale)
    if len(data):
        values = [float(v) / scale for v in list(data["peak"]) + list(data["predicted"])]
        low, high = min(values) * 0.95, max(values) * 1.05
        series.append(Series(name="y = x", x=[low, high], y=[low, high], kind="lines", dashed=True))
    engines = ", ".join(str(e) for e in dict.fromkeys(data["engine"].dropna())) or "planner"
    sources = ", ".join(str(s) for s in dict.fromkeys(data["mem_source"].dropna())) or "measured"
    return Chart(
        key="memory", title="planner-predicted against measured peak memory", x_title=f"measured ({unit}, {sources})",
        y_title=f"predicted ({unit}, {engines})", series=series,
        caption="Points on the dashed y = x line are exact predictions; above it the planner over-estimates.",
    )


def rank_chart(frame: pd.DataFrame, metric_name: str) -> Chart:
    """Rank against task metric for the LoRA family (every method whose config has a rank)."""
    data = frame[frame["metric"].notna() & frame["rank"].notna()]
    return Chart(
        key="rank", title=f"rank against {metric_name} (LoRA family)", x_title="rank (log scale)",
        y_title=metric_name, series=_per_method(data, "rank", "metric"), x_log=True,
        x_ticks=sorted({int(r) for r in data["rank"]}),
        caption="Successful trials of the methods that have a rank (LoRA, QLoRA, DoRA, rsLoRA, ...).",
    )


def result_charts(frame: pd.DataFrame, comparison: pd.DataFrame, metric_name: str,
                  higher_is_better: bool) -> list[Chart]:
    """Every result chart, in report order (charts without data are kept; the caller decides)."""
    return [
        pareto_chart(frame, metric_name, higher_is_better),
        forgetting_chart(frame, metric_name),
        latency_chart(comparison),
        memory_prediction_chart(frame),
        rank_chart(frame, metric_name),
    ]
