"""'When to pick it': a short reason per method, derived only from the measured comparison.

A reason that says one method is better ("best accuracy", "lowest forgetting", "fastest training", "fastest
decoding") is given only when the difference is one: the leader's 95% interval (`<field>_ci` in the results)
separates from every other method's. Results without intervals (written before they existed) fall back to the
point estimates. Exact measurements (peak memory, adapter size) need no interval.

Two checks add warnings instead of reasons:
- decode parity: a merged adapter is the base model's own architecture, so merged and base decode speeds must
  agree; when they do not (separated intervals, or more than 10% apart without intervals), the timing was
  disturbed and the method earns no decoding claim;
- forgetting: a method's best trial that forgets far more than the other methods' best trials is flagged
  (`forgetting_warnings`; the threshold is documented in docs/harness.md).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from peftplan.reports.fmt import fmt_bytes, fmt_num, fmt_rate, is_missing
from peftplan.reports.pareto import pareto_mask
from peftplan.stats import separated

if TYPE_CHECKING:
    import pandas as pd

MAX_REASONS = 3
PARITY_TOLERANCE = 0.10  # merged vs base decode, relative, when no intervals were recorded
# A best trial's forgetting is "large next to the others" when even the low end of its interval (its value
# without one) exceeds FORGETTING_RATIO times the median of the other methods' best trials and exceeds it by
# FORGETTING_MIN_DELTA nats per token (so that 0.003 against 0.001 is no alarm).
FORGETTING_RATIO = 3.0
FORGETTING_MIN_DELTA = 0.1
_GiB = 1024**3
# Memory lines people budget against: binary steps (…, 512 MiB, 768 MiB, 1 GiB, 1.5 GiB, …) and GPU sizes.
_THRESHOLDS = sorted(
    {int(b * 2**e) for b in (1.0, 1.5) for e in range(20, 44)}
    | {g * _GiB for g in (6, 10, 12, 20, 24, 40, 48, 80, 96, 141, 192)}
)


def _interval(value: Any) -> list[float] | None:
    """[low, high] as floats; a missing end is unbounded (a timing too noisy to bound), so it separates from
    nothing on that side."""
    if isinstance(value, list | tuple) and len(value) == 2 and not all(is_missing(v) for v in value):
        low, high = value
        return [-math.inf if is_missing(low) else float(low), math.inf if is_missing(high) else float(high)]
    return None


def _best(values: dict[str, Any], *, highest: bool, intervals: dict[str, Any] | None = None) -> set[str]:
    """The method(s) to credit as best: the leader when its interval separates from every other method's.

    Without any interval (exact measurements, or results from before intervals), the point estimates decide and
    a tie credits every tied method.
    """
    present = {k: float(v) for k, v in values.items() if not is_missing(v)}
    if len(present) < 2:
        return set()
    target = max(present.values()) if highest else min(present.values())
    leaders = {k for k, v in present.items() if abs(v - target) <= 1e-9 * max(1.0, abs(target))}
    known = {k: _interval((intervals or {}).get(k)) for k in present}
    if not any(known.values()):
        return leaders
    if len(leaders) > 1:
        return set()
    (leader,) = leaders
    own = known[leader] or [present[leader]] * 2
    others = [known[k] or [v, v] for k, v in present.items() if k != leader]
    return {leader} if all(separated(own, other) for other in others) else set()


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


def parity_mismatches(comparison: pd.DataFrame) -> dict[str, str]:
    """Methods whose merged decode speed disagrees with the base's, with the numbers.

    A merged adapter (on an unquantized base: merging into a quantized one dequantizes it) decodes with exactly
    the base's architecture, so a difference is the timing's, not the method's.
    """
    out = {}
    for row in comparison.to_dict("records"):
        merged, base = row.get("decode_merged"), row.get("decode_base")
        if is_missing(merged) or is_missing(base) or row.get("quantized") is True:
            continue
        merged_ci, base_ci = _interval(row.get("decode_merged_ci")), _interval(row.get("decode_base_ci"))
        if merged_ci is not None and base_ci is not None:
            apart = separated(merged_ci, base_ci)
        else:
            apart = abs(float(merged) - float(base)) > PARITY_TOLERANCE * max(float(merged), float(base))
        if apart:
            out[str(row["method"])] = (f"merged decodes at {fmt_rate(merged)} tok/s and the base at {fmt_rate(base)} "
                                       "tok/s, though a merged adapter is the base's architecture: the timing was "
                                       "disturbed (another job on the machine?), so no decoding claim is made")
    return out


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
    if _confirmed_methods(col("confirmed_mean")) >= 2:  # confirmation runs: judged on the mean over seeds
        for m in _best(col("confirmed_mean"), highest=higher_is_better, intervals=col("confirmed_ci")):
            reasons[m].append(f"best {metric_name} (confirmed over seeds)")
    else:
        for m in _best(col("metric"), highest=higher_is_better, intervals=col("metric_ci")):
            reasons[m].append(f"best {metric_name}")
    only = _only_under(col("peak"))
    if only:
        reasons[only[0]].append(only[1])
    else:
        for m in _best(col("peak"), highest=False):
            reasons[m].append("lowest peak memory")
    for m in _best(col("forgetting"), highest=False, intervals=col("forgetting_ci")):
        reasons[m].append("lowest forgetting")
    for m in _best(col("train_tps"), highest=True, intervals=col("train_tps_ci")):
        reasons[m].append("fastest training")
    disturbed = parity_mismatches(comparison)
    served: dict[str, Any] = {}
    served_ci: dict[str, Any] = {}
    for m, r in rows.iterrows():
        if m in disturbed or "decode_unmerged" not in rows:
            continue
        merged = "decode_merged" in rows and not is_missing(r["decode_merged"])
        served[m] = r["decode_merged"] if merged else r["decode_unmerged"]
        served_ci[m] = r.get("decode_merged_ci" if merged else "decode_unmerged_ci")
    for m in _best(served, highest=True, intervals=served_ci):
        reasons[m].append("fastest decoding")
    for m in _best(col("adapter_bytes"), highest=False):
        reasons[m].append("smallest adapter")

    measured = rows[rows["metric"].notna() & rows["peak"].notna()] if "peak" in rows else rows.iloc[:0]
    front = dict(zip(measured.index, pareto_mask(list(measured["metric"]), list(measured["peak"]),
                                                 higher_is_better=higher_is_better), strict=True))
    metric_ci = col("metric_ci")
    for m in rows.index:
        if reasons[m]:
            continue
        if is_missing(rows.at[m, "metric"]):
            reasons[m].append("no successful trial")
        elif front.get(m):
            article = "an" if metric_name[:1].lower() in "aeiou" else "a"
            reasons[m].append(f"{article} {metric_name}/memory trade-off on the Pareto front")
        elif m in front:
            sign = 1.0 if higher_is_better else -1.0
            better = [o for o, on in front.items() if on and sign * measured.at[o, "metric"] >= sign * measured.at[m, "metric"]
                      and measured.at[o, "peak"] <= measured.at[m, "peak"]
                      and _clearly_apart(measured.at[o, "metric"], metric_ci.get(o), measured.at[m, "metric"],
                                         metric_ci.get(m))]
            reasons[m].append(f"dominated by {better[0]} (better {metric_name}, less memory)" if better
                              else "no clear advantage in this run")
        else:
            reasons[m].append("no clear advantage in this run")
    warned: dict[str, list[str]] = {m: ["⚠ merged/base decode mismatch"] for m in disturbed}
    for m, (delta, reference) in large_forgetting(comparison).items():
        warned.setdefault(m, []).append(f"⚠ forgets far more than the others (Δ {fmt_num(delta, 2)} against "
                                        f"{fmt_num(reference, 2)})")
    return {m: "; ".join(r[:MAX_REASONS] + warned.get(m, [])) for m, r in reasons.items()}


def large_forgetting(comparison: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Methods whose best trial forgets far more than the other methods' best trials: method -> (its Δ loss, the
    median Δ of the others). See FORGETTING_RATIO and FORGETTING_MIN_DELTA."""
    import statistics

    if "forgetting" not in comparison:
        return {}
    rows = comparison.set_index("method")
    deltas = {m: float(v) for m, v in rows["forgetting"].to_dict().items() if not is_missing(v)}
    intervals = rows["forgetting_ci"].to_dict() if "forgetting_ci" in rows else {}
    out = {}
    for method, delta in deltas.items():
        others = [v for m, v in deltas.items() if m != method]
        if not others:
            continue
        reference = statistics.median(others)
        found = _interval(intervals.get(method))
        low = found[0] if found is not None else delta
        if low > FORGETTING_RATIO * max(reference, 0.0) and low - reference >= FORGETTING_MIN_DELTA:
            out[str(method)] = (delta, reference)
    return out


def forgetting_warnings(comparison: pd.DataFrame) -> list[str]:
    """The caveat for each method `large_forgetting` flags, with the numbers."""
    rows = comparison.set_index("method")
    out = []
    for method, (delta, reference) in large_forgetting(comparison).items():
        interval = rows.at[method, "forgetting_ci"] if "forgetting_ci" in rows else None
        out.append(f"{method}: its best trial forgets far more than the other methods' best trials: Δ loss "
                   f"{_with_interval(delta, interval)} against their median {fmt_num(reference, 2)} (flagged above "
                   f"{FORGETTING_RATIO:g}× the median and +{FORGETTING_MIN_DELTA:g}); weigh its "
                   f"{rows.at[method, 'metric_name'] if 'metric_name' in rows else 'task metric'} against that")
    return out


def _confirmed_methods(means: dict[str, Any]) -> int:
    return sum(1 for v in means.values() if not is_missing(v))


def _clearly_apart(a: Any, a_ci: Any, b: Any, b_ci: Any) -> bool:
    """Two values differ beyond their intervals (or, without intervals, at all)."""
    a_iv, b_iv = _interval(a_ci), _interval(b_ci)
    if a_iv is None and b_iv is None:
        return True
    return separated(a_iv or [float(a)] * 2, b_iv or [float(b)] * 2)


def unclaimed(comparison: pd.DataFrame, *, higher_is_better: bool = True) -> list[str]:
    """Notes on differences the point estimates show but the intervals do not support."""
    rows = comparison.set_index("method")
    notes = []
    confirmed = "confirmed_mean" in rows and _confirmed_methods(rows["confirmed_mean"].to_dict()) >= 2
    checks = [("confirmed_mean", "confirmed_ci", higher_is_better, "best {metric} (confirmed over seeds)")
              if confirmed else ("metric", "metric_ci", higher_is_better, "best {metric}"),
              ("forgetting", "forgetting_ci", False, "lowest forgetting"),
              ("train_tps", "train_tps_ci", True, "fastest training")]
    names = list(rows["metric_name"]) if "metric_name" in rows else []
    metric_name = next((n for n in names if isinstance(n, str)), "task metric")
    for column, ci, highest, claim in checks:
        if column not in rows or ci not in rows:
            continue
        values = {m: v for m, v in rows[column].to_dict().items() if not is_missing(v)}
        intervals = rows[ci].to_dict()
        if len(values) < 2 or not any(_interval(intervals.get(m)) for m in values):
            continue
        if _best(values, highest=highest, intervals=intervals):
            continue
        leader = (max if highest else min)(values, key=lambda m: values[m])
        overlapping = [m for m in values if m != leader and not separated(
            _interval(intervals.get(leader)) or [values[leader]] * 2, _interval(intervals.get(m)) or [values[m]] * 2)]
        shown = ", ".join(f"{m} {_with_interval(values[m], intervals.get(m))}" for m in [leader, *overlapping])
        notes.append(f"no '{claim.format(metric=metric_name)}' claimed: the 95% intervals overlap ({shown})")
    return notes


def _with_interval(value: Any, interval: Any) -> str:
    found = _interval(interval)
    return fmt_num(value) if found is None else f"{fmt_num(value)} [{fmt_num(found[0])}, {fmt_num(found[1])}]"
