"""`peftplan plan --format html`: the plan JSON (DESIGN.md's contract) as one self-contained page.

Per method, a stacked bar of the memory breakdown at the step's peak against the VRAM line, as in
"Will it fine-tune?", and the plan's table and recommendation. Shares the report's templates.
"""

from __future__ import annotations

from typing import Any

from peftplan.errors import BadInputError
from peftplan.reports.chart import Chart, Series
from peftplan.reports.fmt import fmt_bytes, fmt_count, fmt_params, is_missing

# The parts of peak_allocated, in stacking order, with their legend names.
COMPONENTS = [
    ("weights", "weights"), ("quant_constants", "quant constants"), ("adapter", "adapter"),
    ("gradients", "gradients"), ("optimizer", "optimizer states"), ("activations", "activations"),
    ("logits", "logits"),
]
_GiB = 2.0**30


def _labels(methods: list[dict[str, Any]]) -> list[str]:
    """Bar labels: the method name, with its config where one method appears more than once."""
    names = [str(m.get("method", "?")) for m in methods]
    labels: list[str] = []
    for name, entry in zip(names, methods, strict=True):
        if names.count(name) > 1:
            config = entry.get("config") or {}
            name = f"{name} ({fmt_params(config)})" if config else f"{name} #{len(labels)}"
        labels.append(name)
    return labels


def _num(value: Any) -> float:
    return 0.0 if is_missing(value) else float(value)


def memory_chart(plan: dict[str, Any]) -> Chart:
    """Stacked horizontal bars (GiB): components, the allocator's reserve and the CUDA overhead."""
    methods = plan.get("methods") or []
    labels = _labels(methods)
    series = []
    for key, name in COMPONENTS:
        series.append(Series(name=name, x=[_num(m["memory"].get(key)) / _GiB for m in methods], y=labels,
                             kind="bar"))
    reserve, overhead = [], []
    for m in methods:
        mem = m["memory"]
        parts = sum(_num(mem.get(k)) for k, _ in COMPONENTS)
        reserved = _num(mem.get("reserved")) or parts
        reserve.append(max(0.0, reserved - parts) / _GiB)  # allocator cache above the live tensors
        overhead.append(_num(mem.get("overhead")) / _GiB)
    series.append(Series(name="allocator reserve", x=reserve, y=labels, kind="bar"))
    series.append(Series(name="CUDA context & workspaces", x=overhead, y=labels, kind="bar"))
    vram = (plan.get("budget") or {}).get("vram_bytes")
    gpu = (plan.get("budget") or {}).get("gpu")
    vlines = [(float(vram) / _GiB, f"VRAM {fmt_bytes(vram)}" + (f" ({gpu})" if gpu else ""))] if vram else []
    return Chart(
        key="plan-memory", title="memory at the training step's peak, per method", x_title="GiB",
        y_title="", series=[s for s in series if any(v > 0 for v in s.x)], horizontal=True, stacked=True,
        vlines=vlines, group="plan", height=max(300, 120 + 30 * len(methods)),
        caption="Components are the parts of peak_allocated (what torch.cuda.max_memory_allocated reports); "
                "with the allocator's reserve and the CUDA context they make the total the device shows, "
                "which is what 'fits' is judged on.",
    )


def _rows(plan: dict[str, Any]) -> tuple[list[str], list[list[Any]], list[str]]:
    from peftplan.reports.html import Cell

    header = ["method", "fits", "trainable params", "peak allocated", "device total", "headroom",
              "max batch", "max seq len", "adapter size", "mergeable", "inference overhead", "config"]
    total = (plan.get("model") or {}).get("total_params")
    rows, statuses = [], []
    for label, m in zip(_labels(plan["methods"]), plan["methods"], strict=True):
        mem = m["memory"]
        trainable = m.get("trainable_params")
        pct = 100.0 * trainable / total if trainable and total else None
        share = "" if pct is None else f" ({pct:.2g}%)" if pct < 1 else f" ({pct:.0f}%)"

        def num(value: Any, text: str) -> Any:
            return Cell(text, "" if is_missing(value) else repr(float(value)))

        rows.append([
            Cell(label), Cell("yes" if m.get("fits") else "no"),
            num(trainable, fmt_count(trainable) + share),
            num(mem.get("peak_allocated"), fmt_bytes(mem.get("peak_allocated"))),
            num(mem.get("total"), fmt_bytes(mem.get("total"))),
            num(m.get("headroom_bytes"), fmt_bytes(m.get("headroom_bytes"))),
            num(m.get("max_batch_size"), str(m.get("max_batch_size") if m.get("max_batch_size") is not None else "-")),
            num(m.get("max_seq_len"), str(m.get("max_seq_len") if m.get("max_seq_len") is not None else "-")),
            num(m.get("adapter_bytes"), fmt_bytes(m.get("adapter_bytes"))),
            Cell("yes" if m.get("mergeable") else "no"),
            Cell(str(m.get("inference_overhead") if m.get("inference_overhead") is not None else "-")),
            Cell(fmt_params(m.get("config") or {})),
        ])
        statuses.append("success" if m.get("fits") else "oom")
    return header, rows, statuses


def render_plan_html(plan_json: dict[str, Any]) -> str:
    """One self-contained HTML page for a plan.

    Args:
        plan_json: The object `peftplan plan --format json` prints.

    Raises:
        BadInputError: the object lacks the contract's `model` or `methods` (or a method its `memory`).
    """
    from peftplan.reports.html import figures, render_page

    if not isinstance(plan_json, dict) or not isinstance(plan_json.get("methods"), list):
        raise BadInputError("not a plan: expected a JSON object with a 'methods' list")
    missing = [str(m.get("method", i)) for i, m in enumerate(plan_json["methods"]) if not isinstance(m.get("memory"), dict)]
    if missing:
        raise BadInputError(f"plan methods without a 'memory' breakdown: {', '.join(missing)}")
    model = plan_json.get("model") or {}
    budget = plan_json.get("budget") or {}
    header, rows, statuses = _rows(plan_json)
    chart = memory_chart(plan_json)
    vram = budget.get("vram_bytes")
    title = f"peftplan plan: {model.get('id', 'model')}" + (f" in {fmt_bytes(vram)}" if vram else "")
    return render_page(
        "plan.html.j2", title=title, figures=figures([chart]) if plan_json["methods"] else [],
        heading=title, model=model, budget=budget, total_params=fmt_count(model.get("total_params")),
        vram=fmt_bytes(vram) if vram else "-", training=plan_json.get("training") or {},
        recommendation=plan_json.get("recommendation") or {}, header=header, rows=rows, statuses=statuses,
        fitting=sum(1 for m in plan_json["methods"] if m.get("fits")), n_methods=len(plan_json["methods"]),
        fmt_params=fmt_params,
    )
