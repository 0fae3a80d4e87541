"""`peftplan plan --format html`: the plan JSON (DESIGN.md's contract) as one self-contained page.

Per method, a stacked bar of the memory breakdown at the step's peak against the VRAM line, as in
"Will it fine-tune?", and the plan's table and recommendation. Shares the report's templates.
"""

from __future__ import annotations

from typing import Any

from peftplan.errors import BadInputError
from peftplan.reports.chart import Chart, Series
from peftplan.reports.fmt import fmt_bytes, fmt_count, fmt_params, fmt_rate, is_missing

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


def _cell(value: Any, text: str) -> Any:
    """A numeric cell: `text` shown, `value` to sort by."""
    from peftplan.reports.html import Cell

    return Cell(text, "" if is_missing(value) else repr(float(value)))


def _float(value: Any) -> float | None:
    return None if is_missing(value) else float(value)


def _opt(value: Any, fmt: str = "{}") -> str:
    return "-" if is_missing(value) else fmt.format(value)


def _extra_memory(methods: list[dict[str, Any]]) -> list[str]:
    """Memory lines outside peak_allocated that some method has (paged optimizer states, host offload)."""
    return [key for key in ("paged", "host") if any(_num(m["memory"].get(key)) for m in methods)]


def _traced(methods: list[dict[str, Any]]) -> bool:
    return any(isinstance(m.get("trace"), dict) for m in methods)


def _rows(plan: dict[str, Any]) -> tuple[list[str], list[list[Any]], list[str]]:
    """The memory table: what the step holds at its peak, the fit and the largest settings that fit."""
    from peftplan.reports.html import Cell

    methods = plan["methods"]
    extra = _extra_memory(methods)
    traced = _traced(methods)
    header = ["method", "fits", "trainable params", "peak allocated", "device total", "headroom",
              *[f"{key} (outside peak)" for key in extra], *(["traced peak", "analytic error"] if traced else []),
              "max batch", "max seq len", "max rank", "config"]
    total = (plan.get("model") or {}).get("total_params")
    rows, statuses = [], []
    for label, m in zip(_labels(methods), methods, strict=True):
        mem = m["memory"]
        trainable = m.get("trainable_params")
        pct = 100.0 * trainable / total if trainable and total else None
        share = "" if pct is None else f" ({pct:.2g}%)" if pct < 1 else f" ({pct:.0f}%)"
        trace = m.get("trace") if isinstance(m.get("trace"), dict) else {}
        traced_peak = (trace.get("memory") or {}).get("peak_allocated")
        error = _float(trace.get("error"))
        rows.append([
            Cell(label), Cell("yes" if m.get("fits") else "no"),
            _cell(trainable, fmt_count(trainable) + share),
            _cell(mem.get("peak_allocated"), fmt_bytes(mem.get("peak_allocated"))),
            _cell(mem.get("total"), fmt_bytes(mem.get("total"))),
            _cell(m.get("headroom_bytes"), fmt_bytes(m.get("headroom_bytes"))),
            *[_cell(mem.get(key), fmt_bytes(mem.get(key))) for key in extra],
            *([_cell(traced_peak, "failed" if trace.get("failed") else fmt_bytes(traced_peak)),
               _cell(error, "-" if error is None else f"{100 * error:+.1f}%")] if traced else []),
            _cell(m.get("max_batch_size"), _opt(m.get("max_batch_size"))),
            _cell(m.get("max_seq_len"), _opt(m.get("max_seq_len"))),
            _cell(m.get("max_rank"), _opt(m.get("max_rank"))),
            Cell(fmt_params(m.get("config") or {})),
        ])
        statuses.append("success" if m.get("fits") else "oom")
    return header, rows, statuses


def _cost_rows(plan: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The speed, cost and serving table: training time and price, adapter files, task switching, inference."""
    from peftplan.reports.html import Cell

    tasks = (plan.get("training") or {}).get("tasks") or 1
    header = ["method", "tokens/s", "GFLOP/token", "hours", "cost (USD)", "adapter file", "swap (ms)",
              f"storage for {tasks} task{'s' if tasks != 1 else ''}", "serving weights", "mergeable",
              "inference overhead"]
    rows = []
    for label, m in zip(_labels(plan["methods"]), plan["methods"], strict=True):
        speed = m.get("throughput") or {}
        switch = m.get("task_switching") or {}
        inference = m.get("inference") or {}
        flops = _float(speed.get("flops_per_token"))
        swap = _float(switch.get("swap_seconds"))
        swap_ms = None if swap is None else 1000 * swap
        extra_pct = _float(inference.get("extra_flops_pct"))
        overhead = str(m.get("inference_overhead") if m.get("inference_overhead") is not None else "-")
        if inference.get("kind") not in (None, "none") and extra_pct is not None:
            overhead += f": +{extra_pct:.2g}% FLOPs"
            if m.get("mergeable") and inference.get("kind") == "unmerged-matmul":
                overhead += ", 0 if merged"
        rows.append([
            Cell(label),
            _cell(speed.get("tokens_per_second"), fmt_rate(speed.get("tokens_per_second"))),
            _cell(flops, "-" if flops is None else f"{flops / 1e9:,.1f}"),
            _cell(speed.get("hours"), _opt(speed.get("hours"), "{:,.2f}")),
            _cell(speed.get("cost_usd"), _opt(speed.get("cost_usd"), "{:,.2f}")),
            _cell(m.get("adapter_bytes"), fmt_bytes(m.get("adapter_bytes"))),
            _cell(swap_ms, _opt(swap_ms, "{:,.0f}")),
            _cell(switch.get("storage_bytes"), fmt_bytes(switch.get("storage_bytes"))),
            _cell(switch.get("serving_bytes"), fmt_bytes(switch.get("serving_bytes"))),
            Cell("yes" if m.get("mergeable") else "no"),
            Cell(overhead),
        ])
    return header, rows


def _settings(config: dict[str, Any]) -> str:
    from peftplan.planner.render import _settings as settings

    return settings(config)


def _candidate_rows(plan: dict[str, Any]) -> tuple[list[str], list[list[Any]], list[str]]:
    """The search's top configurations: settings, training and serving memory, shape, knobs, speed."""
    from peftplan.reports.html import Cell

    header = ["candidate", "fits", "settings", "training total", "serving per GPU", "micro-batch x accumulation",
              "seq len", "checkpointing", "optimizer", "GPUs", "tokens/s", "hours", "cost (USD)"]
    rows, statuses = [], []
    candidates = (plan.get("recommendation") or {}).get("candidates") or []
    for index, cand in enumerate(candidates, start=1):
        training, speed = cand.get("training") or {}, cand.get("throughput") or {}
        serving, memory = cand.get("serving") or {}, cand.get("memory") or {}
        fits = "yes" if cand.get("fits") else ("no: serving" if cand.get("fits_training") else "no: training")
        gpus = training.get("gpus")
        rows.append([
            Cell(f"{index}. {cand.get('method', '?')}"), Cell(fits), Cell(_settings(cand.get("config") or {})),
            _cell(memory.get("total"), fmt_bytes(memory.get("total"))),
            _cell(serving.get("gpu_bytes"), fmt_bytes(serving.get("gpu_bytes"))),
            Cell(f"{training.get('micro_batch', '-')} x {training.get('grad_accum', '-')}"),
            _cell(training.get("seq_len"), _opt(training.get("seq_len"))),
            Cell(str(training.get("checkpointing", "-"))), Cell(str(training.get("optimizer", "-"))),
            Cell(f"{gpus} {training.get('shard')}" if gpus and gpus > 1 else _opt(gpus)),
            _cell(speed.get("tokens_per_second"), fmt_rate(speed.get("tokens_per_second"))),
            _cell(speed.get("hours"), _opt(speed.get("hours"), "{:,.2f}")),
            _cell(speed.get("cost_usd"), _opt(speed.get("cost_usd"), "{:,.2f}")),
        ])
        statuses.append("success" if cand.get("fits") else "oom")
    return header, rows, statuses


def _serving(plan: dict[str, Any]) -> list[tuple[str, str]]:
    """The chosen configuration's serving, briefly."""
    serving = (plan.get("recommendation") or {}).get("serving")
    if not isinstance(serving, dict):
        return []
    out = [("mode", f"{serving.get('mode', '-')} of {serving.get('tasks', '-')} task(s)"),
           ("GPU memory", f"{fmt_bytes(serving.get('gpu_bytes'))} of {fmt_bytes(serving.get('budget_bytes'))} per GPU"
                          + (f", tensor parallel {serving['tensor_parallel']}"
                             if (serving.get("tensor_parallel") or 1) > 1 else "")),
           ("KV cache", f"{fmt_bytes(serving.get('kv_cache_bytes'))} for {serving.get('concurrency', '-')} x "
                        f"{serving.get('context', '-')} tokens"),
           ("resident adapters", _opt(serving.get("resident_adapters"))),
           ("task switch", "-" if is_missing(serving.get("swap_seconds")) else f"{serving['swap_seconds'] * 1000:,.1f} ms"),
           ("mixed-task batches", ("yes: " if serving.get("mixed_batches") else "no: ") + str(serving.get("mixed_how", "")))]
    if serving.get("flags"):
        out.append(("serve flags", " ".join(serving["flags"])))
    return out


def _suggestions(plan: dict[str, Any]) -> list[str]:
    suggestions = (plan.get("recommendation") or {}).get("suggestions") or []
    return [f"{' '.join(s.get('flags') or [])}: {s.get('method', '?')} needs {fmt_bytes(s.get('total'))} to train "
            f"({'fits' if s.get('fits') else 'still does not fit'}, re-planned)" for s in suggestions]


def _legend(plan: dict[str, Any]) -> list[tuple[str, str]]:
    methods = plan["methods"]
    tasks = (plan.get("training") or {}).get("tasks") or 1
    legend = [
        ("peak allocated", "predicted torch.cuda.max_memory_allocated of one steady-state training step, per GPU"),
        ("device total", "peak + the caching allocator's reserve + CUDA context: what the device shows in use and "
                         "what 'fits' is judged on"),
        ("headroom", "the budget minus the device total"),
    ]
    if "paged" in _extra_memory(methods):
        legend.append(("paged", "paged optimizer states in unified memory, which max_memory_allocated never counts"))
    if "host" in _extra_memory(methods):
        legend.append(("host", "bytes offloading keeps in host RAM"))
    if _traced(methods):
        legend += [("traced peak", "the same step traced with fake tensors (--engine trace or both)"),
                   ("analytic error", "(analytic peak - traced peak) / traced peak")]
    legend += [
        ("max batch, max seq len, max rank", "the largest micro-batch, sequence length and LoRA-family rank that fit"),
        ("tokens/s", "training throughput at the assumed model-FLOPs utilisation"),
        ("hours, cost", "time and on-demand price of the training tokens ('-': no data size given)"),
        ("swap (ms)", "switching to another task: load its adapter from disk, copy it to the GPU (with merge "
                      "switching, also unmerge the previous adapter and merge the next)"),
        (f"storage for {tasks} task{'s' if tasks != 1 else ''}",
         "disk for the base model once plus one adapter per task (full fine-tuning: one model per task)"),
        ("serving weights", "GPU memory for the weights while serving (multi-tenant: base + every adapter)"),
        ("inference overhead", "extra FLOPs per token while the adapter runs unmerged; '0 if merged': none once "
                               "merged into the base weights"),
    ]
    return legend


def _compute(plan: dict[str, Any]) -> str:
    """What time and cost assume: the GPU profile, its speed and price, and the data size."""
    budget = plan.get("budget") or {}
    training = plan.get("training") or {}
    parts = []
    if budget.get("compute_profile"):
        parts.append(str(budget["compute_profile"]))
    tflops, price, tokens = (_float(budget.get("bf16_tflops")), _float(budget.get("usd_per_hour")),
                             _float(training.get("train_tokens")))
    if tflops is not None:
        parts.append(f"{tflops:g} bf16 TFLOP/s")
    if price is not None:
        parts.append(f"${price:.2f}/hour per GPU")
    parts.append(f"{tokens:,.0f} training tokens" if tokens is not None else "no data size given")
    return ", ".join(parts)


def _notes(plan: dict[str, Any]) -> list[str]:
    from peftplan.planner.render import HOURS_HINT

    notes = [f"skipped {s.get('method', '?')}: {s.get('reason', '')}" for s in plan.get("skipped") or []]
    notes += [str(n) for n in plan.get("notes") or []]
    for label, m in zip(_labels(plan["methods"]), plan["methods"], strict=True):
        notes += [f"{label}: {n}" for n in m.get("notes") or []]
    if any(is_missing((m.get("throughput") or {}).get("hours")) for m in plan["methods"] if m.get("throughput")):
        notes.append(HOURS_HINT)
    return notes


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
    candidate_header, candidate_rows, candidate_statuses = _candidate_rows(plan_json)
    cost_header, cost_rows = _cost_rows(plan_json)
    chart = memory_chart(plan_json)
    vram = budget.get("vram_bytes")
    title = f"peftplan plan: {model.get('id', 'model')}" + (f" in {fmt_bytes(vram)}" if vram else "")
    return render_page(
        "plan.html.j2", title=title, figures=figures([chart]) if plan_json["methods"] else [],
        heading=title, model=model, budget=budget, total_params=fmt_count(model.get("total_params")),
        vram=fmt_bytes(vram) if vram else "-", training=plan_json.get("training") or {},
        recommendation=plan_json.get("recommendation") or {}, header=header, rows=rows, statuses=statuses,
        cost_header=cost_header, cost_rows=cost_rows, legend=_legend(plan_json), notes=_notes(plan_json),
        compute=_compute(plan_json), candidate_header=candidate_header, candidate_rows=candidate_rows,
        candidate_statuses=candidate_statuses, serving=_serving(plan_json), suggestions=_suggestions(plan_json),
        fitting=sum(1 for m in plan_json["methods"] if m.get("fits")), n_methods=len(plan_json["methods"]),
        fmt_params=fmt_params,
    )
