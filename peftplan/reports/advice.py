"""'When to pick it': a short reason per method, derived only from the measured comparison."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from peftplan.reports.fmt import fmt_bytes, is_missing
from peftplan.reports.pareto import pareto_mask

if TYPE_CHECKING:
    import pandas as pd

MAX_REASONS = 3
_GiB = 1024**3
# Memory lines people budget against: binary steps (…, 512 MiB, 768 MiB, 1 GiB, 1.5 GiB, …) and GPU sizes.
_THRESHOLDS = sorted(
    {int(b * 2**e) for b in (1.0, 1.5) for e in range(20, 44)}
    | {g * _GiB for g in (6, 10, 12, 20, 24, 40, 48, 80, 96, 141, 192)}
)


def _best(values: dict[str, Any], *, highest: bool) -> set[str]:
    present = {k: float(v) for k, v in values.items() if not is_missing(v)}
    if len(present) < 2:
        return set()
    target = max(present.values()) if highest else min(present.values())
    return {k for k, v in present.items() if abs(v - target) <= 1e-9 * max(1.0, abs(target))}


def _only_under(peaks: dict[str, Any]) -> tuple[str, str] | None:
    """(method, 'only method under 8 GiB') when one method alone stays under a budget line."""
    present = sorted((float(v), k) for k, v in peaks.items() if not is_missing(v))
    if len(present) < 2:
        return None
    (low, method), (second, _) = present[0], present[1]
    line = next((t for t in _THRESHOLDS if t >= low), None)
    if line is None or second <= line:
        return None
    return method, f"only method under {fmt_bytes(line)}"


def when_to_pick(comparison: pd.DataFrame, *, higher_is_better: bool = True) -> dict[str, str]:
    """Reasons per method, strongest first, at most three; a method without a reason gets the honest one.

    Args:
        comparison: One row per method (the output of `tables.method_comparison` before this column).
        higher_is_better: The task metric's direction.
    """
    rows = comparison.set_index("method")
    reasons: dict[str, list[str]] = {m: [] for m in rows.index}

    def col(name: str) -> dict[str, Any]:
        return rows[name].to_dict() if name in rows else {}

    metric_name = next((n for n in col("metric_name").values() if isinstance(n, str)), "task metric")
    for m in _best(col("metric"), highest=higher_is_better):
        reasons[m].append(f"best {metric_name}")
    only = _only_under(col("peak"))
    if only:
        reasons[only[0]].append(only[1])
    else:
        for m in _best(col("peak"), highest=False):
            reasons[m].append("lowest peak memory")
    for m in _best(col("forgetting"), highest=False):
        reasons[m].append("lowest forgetting")
    for m in _best(col("train_tps"), highest=True):
        reasons[m].append("fastest training")
    served = {m: r["decode_merged"] if not is_missing(r["decode_merged"]) else r["decode_unmerged"]
              for m, r in rows.iterrows()} if "decode_merged" in rows else {}
    for m in _best(served, highest=True):
        reasons[m].append("fastest decoding")
    for m in _best(col("adapter_bytes"), highest=False):
        reasons[m].append("smallest adapter")

    measured = rows[rows["metric"].notna() & rows["peak"].notna()] if "peak" in rows else rows.iloc[:0]
    front = dict(zip(measured.index, pareto_mask(list(measured["metric"]), list(measured["peak"]),
                                                 higher_is_better=higher_is_better), strict=True))
    for m in rows.index:
        if reasons[m]:
            continue
        if is_missing(rows.at[m, "metric"]):
            reasons[m].append("no successful trial")
        elif front.get(m):
            reasons[m].append(f"a {metric_name}/memory trade-off on the Pareto front")
        elif m in front:
            sign = 1.0 if higher_is_better else -1.0
            better = [o for o, on in front.items() if on and sign * measured.at[o, "metric"] >= sign * measured.at[m, "metric"]
                      and measured.at[o, "peak"] <= measured.at[m, "peak"]]
            reasons[m].append(f"dominated by {better[0]} (better {metric_name}, less memory)" if better
                              else "no clear advantage in this run")
        else:
            reasons[m].append("no clear advantage in this run")
    return {m: "; ".join(r[:MAX_REASONS]) for m, r in reasons.items()}
