"""A Plan as text: rich tables (with a fit bar against the budget) or Markdown. JSON is `Plan.to_dict`.

Every table is built once as (title, columns, rows) and rendered by `peftplan.termtable`, which keeps
each value whole at any terminal width; a legend under the tables explains every short header.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from peftplan.termtable import Column, markdown_table, pack, print_prose
from peftplan.termtable import print_table as print_rich_table

if TYPE_CHECKING:
    from rich.console import Console

    from peftplan.planner.plan import MethodPlan, Plan

GIB = 1 << 30
BAR_WIDTH = 8
COMPONENT_ORDER = ("weights", "quant_constants", "adapter", "gradients", "optimizer", "activations", "logits")
HOURS_HINT = "hours and cost show '-' without the data size: pass --examples N (with --epochs) or --train-tokens N"


def gib(n: int | float) -> str:
    return f"{n / GIB:.2f}"


def memory_unit(values: list[int]) -> tuple[str, int]:
    """GiB, or MiB when every value is under 1 GiB (a small model's plan would read 0.00 GiB)."""
    return ("GiB", GIB) if any(v >= GIB for v in values) or not values else ("MiB", 1 << 20)


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def fit_bar(total: int, budget: int, width: int = BAR_WIDTH) -> str:
    """`█████░░░ 62%`: the share of the budget a method uses (capped bar, true percentage)."""
    share = total / budget if budget else float("inf")
    filled = min(width, round(share * width))
    return "█" * filled + "░" * (width - filled) + f" {share * 100:.0f}%"


@dataclass
class TextTable:
    """One table of the plan: title segments (a line breaks only between them), columns, rows, and legend
    entries for its short headers."""

    key: str
    title: list[str]
    columns: list[Column]
    rows: list[list[str]]
    legend: list[tuple[str, str]] = field(default_factory=list)


# --- the title ------------------------------------------------------------------------------------

# `training` keys the title spells in its own words (or that other tables show).
_TITLE_KEYS = {"seq_len", "batch_size", "grad_checkpointing", "checkpointing", "optimizer", "dtype", "attention",
               "shard", "device", "tasks", "switching", "train_tokens", "examples", "stack"}


def _knob_words(training: dict[str, Any]) -> list[str]:
    """Every other `training` field that differs from its stack's default, as words (`loss chunked`)."""
    from peftplan.planner.stacks import STACKS

    stack = STACKS.get(str(training.get("stack")))
    defaults = stack.knobs.to_dict() if stack else {}
    if training.get("loss") != "chunked":
        defaults["loss_chunks"] = training.get("loss_chunks")  # only meaningful for the chunked loss
    words = []
    for key, value in training.items():
        if key in _TITLE_KEYS or value is None or value is False or defaults.get(key, None) == value:
            continue
        name = key.replace("_", "-")
        words.append(name if value is True else f"{name} {value}")
    return words


def title_segments(plan: Plan) -> list[list[str]]:
    """The title as groups of segments: model and budget, then the training step (never split inside one)."""
    training = plan.to_dict()["training"]
    budget = plan.budget
    gpus = f"{budget.gpus} x " if budget.gpus > 1 else ""
    shard = str(training.get("shard", "none"))
    # Several GPUs without sharding is data parallel: each holds the whole step plus DDP's buckets.
    mode = f", {shard}" if shard != "none" else (", ddp" if budget.gpus > 1 else "")
    source = budget.gpu.key if budget.compute_from_profile else "vram"
    n = plan.spec.total_params
    params = f"{n / 1e9:.2f} B" if n >= 10**9 else _short(n)
    head = [f"{plan.spec.model_id} ({params} params)",
            f"on {gpus}{budget.vram_gib:.1f} GiB ({source}{mode})"]
    step = [f"seq {training['seq_len']} x batch {training['batch_size']}", str(training["dtype"]),
            str(training["optimizer"]), str(training["attention"])]
    checkpointing = training.get("checkpointing", "recompute" if training.get("grad_checkpointing") else "none")
    if checkpointing != "none":
        step.append("grad-ckpt" if checkpointing == "recompute" else f"grad-ckpt {checkpointing}")
    if training.get("device", "cuda") != "cuda":
        step.append(f"{training['device']} kernels")
    if training.get("stack"):
        step.append(f"stack {training['stack']}")
    return [head, step + _knob_words(training)]


def _title_lines(plan: Plan, width: int) -> list[str]:
    head, step = title_segments(plan)
    return pack(head, width, sep=" ") + pack(step, width)


# --- the tables -----------------------------------------------------------------------------------


def _short(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _pct(x: float) -> str:
    return f"{x:.2g}%" if x < 10 else f"{x:.0f}%"


def _memory_table(plan: Plan) -> TextTable:
    budget = plan.budget.vram_bytes
    # Bytes outside the device's allocated memory (paged optimizer states, host offload): own columns.
    outside = [name for name in ("paged", "host") if any(getattr(e.memory, name, 0) for e in plan.methods)]
    unit, size = memory_unit([e.memory.total for e in plan.methods])
    columns = [Column("method", "left"), Column("trainable", "left"), Column(f"peak\n{unit}"),
               Column(f"total\n{unit}"), *[Column(f"{name}\n{unit}") for name in outside],
               Column("fit", "left"), Column("max\nbatch"), Column("max\nseq"), Column("max\nrank")]
    rows = []
    for e in plan.methods:
        rows.append([
            e.method,
            f"{_short(e.trainable_params)} {_pct(e.trainable_pct)}",
            f"{e.memory.peak_allocated / size:.2f}",
            f"{e.memory.total / size:.2f}",
            *[f"{getattr(e.memory, name) / size:.2f}" for name in outside],
            ("✓ " if e.fits else "✗ ") + fit_bar(e.memory.total, budget),
            str(e.max_batch_size),
            str(e.max_seq_len),
            "-" if e.max_rank is None else str(e.max_rank),
        ])
    legend = [
        ("trainable", "parameters the optimizer updates, and their share of the model"),
        ("peak", "predicted torch.cuda.max_memory_allocated of one steady-state step, per GPU"),
        ("total", "peak + the caching allocator's reserve + CUDA context: what the device shows, what fit is "
                  "judged on"),
        ("fit", "total against the budget (✓ fits, ✗ does not)"),
        ("max batch, max seq, max rank", "the largest micro-batch, sequence length and LoRA-family rank that fit "
                                         "(0: none fits; -: no rank to search)"),
    ]
    knobs: dict[str, list[str]] = {}
    for e in plan.methods:  # what "rank" means for methods whose rank is not LoRA's
        if e.max_rank_knob and not e.max_rank_knob.startswith("rank r of B·A"):
            knobs.setdefault(e.max_rank_knob, []).append(e.method)
    legend += [(f"max rank of {', '.join(names)}", knob) for knob, names in knobs.items()]
    if any(note.startswith("max batch 0") for e in plan.methods for note in e.notes):
        legend.append(("max batch 0", "nothing fits at this sequence even one at a time: the notes say why"))
    if "paged" in outside:
        legend.append(("paged", "paged optimizer states in unified memory: not in peak (max_memory_allocated "
                                "never counts them); they spill to the host under pressure"))
    if "host" in outside:
        legend.append(("host", "bytes offloading keeps in host RAM, outside the GPU"))
    return TextTable("memory", ["Memory per GPU at the training step's peak", "the largest settings that fit"],
                     columns, rows, legend)


def _bytes_table(plan: Plan) -> TextTable:
    columns = [Column("method", "left"), Column("weights"), Column("quant\nconsts"), Column("adapter"),
               Column("grads"), Column("optim\nstates"), Column("activ"), Column("logits"),
               Column("peaks\nat", "left")]
    rows = []
    for e in plan.methods:
        bpp = e.bytes_per_param()
        rows.append([e.method, *[f"{bpp[name]:.2f}" for name in COMPONENT_ORDER], e.peak_moment])
    legend = [
        ("quant consts, optim states", "quantization constants of a 4/8-bit base; optimizer states"),
        ("grads, activ, logits", "gradients; activations saved for the backward; logits and the loss's fp32 copies"),
        ("peaks at", "the moment of the step when memory peaks (loss-bwd: the loss's backward; block-bwd: "
                     "a block's backward; recompute: a checkpointed block recomputed)"),
    ]
    return TextTable("bytes", ["Bytes per model parameter at the peak (the parts of peak)"], columns, rows, legend)


def _speed_table(plan: Plan) -> TextTable:
    gpus = plan.budget.gpus
    tokens = plan.train_tokens
    data = f"{tokens:,} training tokens" if tokens else "no data size given"
    title = ["Training speed and cost", f"MFU {_mfu(plan):.0%}",
             f"{f'{gpus} x ' if gpus > 1 else ''}{plan.budget.gpu.name}", data]
    columns = [Column("method", "left"), Column("tokens\n/s"), Column("GFLOP\n/token"), Column("hours"),
               Column("cost\nUSD")]
    rows = []
    for e in plan.methods:
        speed = e.throughput
        rows.append([
            e.method,
            f"{speed['tokens_per_second']:,.0f}",
            f"{speed['flops_per_token'] / 1e9:,.1f}",
            "-" if speed.get("hours") is None else f"{speed['hours']:,.2f}",
            "-" if speed.get("cost_usd") is None else f"{speed['cost_usd']:,.2f}",
        ])
    legend = [
        ("tokens/s", f"training throughput on {f'all {gpus} GPUs' if gpus > 1 else '1 GPU'} at the assumed "
                     "model-FLOPs utilisation (--mfu)"),
        ("GFLOP/token", "training FLOPs per token (forward, backward and any recomputation)"),
        ("hours, cost USD", "time and on-demand price of the training tokens at the GPU profile's $/hour"),
    ]
    return TextTable("speed", title, columns, rows, legend)


def _switching_table(plan: Plan) -> TextTable:
    tasks = plan.tasks
    noun = "task" if tasks == 1 else "tasks"
    columns = [Column("method", "left"), Column("adapter\nfile"), Column("swap\nms"),
               Column(f"storage\n{tasks} {noun}"), Column("serving\nweights"), Column("serve\nGPU"),
               Column("inference", "left", wrap=True)]
    rows = []
    for e in plan.methods:
        switch, inference, serving = e.task_switching, e.inference, e.serving or {}
        overhead = "none" if inference.get("kind") == "none" else f"+{inference.get('extra_flops_pct', 0):.2g}%"
        if e.mergeable and inference.get("kind") == "unmerged-matmul":
            overhead += ", 0 if merged"
        gpu = serving.get("gpu_bytes")
        rows.append([
            e.method,
            human_bytes(e.adapter_bytes),
            f"{switch['swap_seconds'] * 1000:,.0f}",
            human_bytes(switch["storage_bytes"]),
            human_bytes(switch["serving_bytes"]),
            "-" if gpu is None else human_bytes(gpu) + ("" if serving.get("fits", True) else " ✗"),
            overhead,
        ])
    mode = plan.switching
    swap, storage = {
        "merge": ("load the task's merged copy from disk and copy it to the GPU (a method that cannot merge: its "
                  "adapter)", "one merged copy per task (a method that cannot merge: the base once plus one adapter "
                  "per task)"),
        "hot-swap": ("load its adapter from disk and copy it to the GPU, then unmerge the previous adapter and merge "
                     "the next", "the base model once plus one adapter per task (full fine-tuning: one model per task)"),
    }.get(mode, ("copy a cold adapter from host RAM into a free GPU slot (vLLM; 0 while every tenant has a slot)",
                 "the base model once plus one adapter per task (full fine-tuning: one model per task)"))
    legend = [
        ("adapter file", "size of the saved adapter weights (full fine-tuning: the whole model)"),
        ("swap ms", f"milliseconds to switch to another task: {swap}"),
        (f"storage {tasks} {noun}", f"disk for the --tasks {tasks}: {storage}"),
        ("serving weights", "GPU memory for the weights and resident adapters while serving"
                            + (" (multi-tenant: vLLM's adapter slots, or every tenant's adapter)"
                               if mode == "multi-tenant" else "")),
        ("serve GPU", "what one serving GPU holds: weights, adapters, the KV cache, activations and the CUDA context "
                      "(✗: more than the serving GPU)"),
        ("inference", "extra FLOPs per token at inference while the adapter runs unmerged; "
                      "'0 if merged': none once merged into the base weights"),
    ]
    title = [f"Serving {tasks} {noun} by {mode}", "adapter files, task switching, serving memory, inference overhead"]
    return TextTable("switching", title, columns, rows, legend)


def _trace_table(plan: Plan) -> TextTable | None:
    traced = [e for e in plan.methods if e.trace is not None]
    if not traced:
        return None
    peaks = [e.memory.peak_allocated for e in traced]
    peaks += [((e.trace or {}).get("memory") or {}).get("peak_allocated") or 0 for e in traced]
    unit, size = memory_unit(peaks)
    columns = [Column("method", "left"), Column(f"analytic\npeak {unit}"), Column(f"traced\npeak {unit}"),
               Column("error"), Column("traced\npeaks at", "left"), Column("trace\ns")]
    rows = []
    for e in traced:
        trace = e.trace or {}
        memory = trace.get("memory") or {}
        traced_peak = memory.get("peak_allocated")
        error = trace.get("error")
        if plan.engine == "trace" and traced_peak is not None and error is not None:
            analytic = traced_peak * (1 + error)  # the entry's own memory is the trace's here
        else:
            analytic = e.memory.peak_allocated
        rows.append([
            e.method,
            f"{analytic / size:.2f}",
            "failed" if traced_peak is None else f"{traced_peak / size:.2f}",
            "-" if error is None else f"{error * 100:+.1f}%",
            str(trace.get("peak_phase") or "-"),
            "-" if trace.get("seconds") is None else f"{trace['seconds']:.1f}",
        ])
    legend = [
        ("traced peak", "the peak of the same step traced with fake tensors (no GPU, no weights)"),
        ("error", "(analytic peak - traced peak) / traced peak"),
    ]
    if plan.engine == "trace":
        legend.append(("", "with --engine trace, peak, total and fit above are the traced ones"))
    title = [f"Traced step (--engine {plan.engine})", "against the analytic model"]
    return TextTable("trace", title, columns, rows, legend)


def _mfu(plan: Plan) -> float:
    return float(plan.methods[0].throughput["mfu"]) if plan.methods else 0.0


def _settings(config: dict[str, Any]) -> str:
    """`r=16 alpha=32 all-linear nf4`: a candidate's searched knobs, short."""
    parts = []
    if "rank" in config:
        parts += [f"r={config['rank']}", f"alpha={config.get('alpha', 0):g}"]
    if config.get("targets"):
        parts.append(",".join(config["targets"]))
    if config.get("quant", "none") != "none":
        parts.append(str(config["quant"]))
    for key in ("virtual_tokens", "bottleneck"):
        if config.get(key) is not None:
            parts.append(f"{key.replace('_', ' ')} {config[key]}")
    return " ".join(parts) or "-"


def _candidates_table(plan: Plan) -> TextTable | None:
    """The search's top configurations: settings, memory, shape, knobs, speed, serving."""
    rec = plan.recommendation
    if not rec.candidates:
        return None
    trainings = [c["training"] for c in rec.candidates]
    sharded = any(t["gpus"] > 1 for t in trainings)
    timed = all(c["throughput"].get("hours") is not None for c in rec.candidates)
    unit, size = memory_unit([c["memory"]["total"] for c in rec.candidates]
                             + [c["serving"]["gpu_bytes"] for c in rec.candidates])
    columns = [Column("candidate", "left"), Column("settings", "left", wrap=True, min_wrap=12),
               Column(f"train\n{unit}"), Column(f"serve\n{unit}"), Column("fits", "left"), Column("batch"),
               Column("seq"), Column("ckpt", "left"), Column("optimizer", "left"),
               *([Column("shard", "left")] if sharded else []), Column("tokens\n/s"),
               *([Column("hours"), Column("cost\nUSD")] if timed else [Column("USD\n/Mtok")])]
    rows = []
    for index, (cand, t) in enumerate(zip(rec.candidates, trainings, strict=True), start=1):
        speed, serving = cand["throughput"], cand["serving"]
        fits = "✓" if cand["fits"] else ("✗ serve" if cand.get("fits_training") else "✗ train")
        rows.append([
            f"{index}. {cand['method']}", _settings(cand["config"]), f"{cand['memory']['total'] / size:.2f}",
            f"{serving['gpu_bytes'] / size:.2f}", fits, f"{t['micro_batch']}x{t['grad_accum']}", str(t["seq_len"]),
            t["checkpointing"], t["optimizer"], *([f"{t['gpus']} {t['shard']}"] if sharded else []),
            f"{speed['tokens_per_second']:,.0f}",
            *([f"{speed['hours']:,.2f}", f"{speed['cost_usd']:,.2f}"] if timed
              else [f"{speed['usd_per_million_tokens']:,.2f}"]),
        ])
    legend = [
        ("candidate", "the search's best configuration of each method, best first (quality prior, then training "
                      "cost, then serving cost); 1 is the recommendation when it fits"),
        ("train, serve", "the training step's device total per GPU, and what serving needs on one serving GPU"),
        ("batch", "micro-batch x gradient accumulation (x GPUs = the effective batch)"),
    ]
    if not timed:
        legend.append(("USD/Mtok", "training cost per million tokens at the GPU profile's price"))
    mode = plan.recommendation.serving["mode"] if plan.recommendation.serving else plan.switching
    title = ["Top configurations from the search", f"serving {plan.tasks} task{'s' if plan.tasks != 1 else ''} "
             f"by {mode}"]
    return TextTable("candidates", title, columns, rows, legend)


def _suggestions_table(plan: Plan) -> TextTable | None:
    """When nothing fits: the smallest changes that make something fit, each re-planned."""
    suggestions = plan.recommendation.suggestions
    if not suggestions:
        return None
    unit, size = memory_unit([s["total"] for s in suggestions])
    columns = [Column("change", "left", wrap=True, min_wrap=14), Column("method", "left"), Column(f"train\n{unit}"),
               Column(f"serve\n{unit}"), Column("fits", "left")]
    rows = [[" ".join(s["flags"]), s["method"], f"{s['total'] / size:.2f}",
             "-" if s.get("serving_bytes") is None else f"{s['serving_bytes'] / size:.2f}",
             "✓" if s["fits"] else "✗"] for s in suggestions]
    legend = [("change", "flags to add or change; each was searched again and re-planned (train, serve: its totals)")]
    return TextTable("suggestions", ["Nothing fits: the smallest changes that do"], columns, rows, legend)


def plan_tables(plan: Plan) -> list[TextTable]:
    """The plan's tables: memory and fit, bytes per parameter, speed and cost, switching, the search's top
    configurations (and, when nothing fits, the changes that would), and the trace."""
    tables = [_memory_table(plan), _bytes_table(plan), _speed_table(plan), _switching_table(plan)]
    tables += [t for t in (_candidates_table(plan), _suggestions_table(plan), _trace_table(plan)) if t is not None]
    return tables


# --- the text under the tables --------------------------------------------------------------------


def _fmt_knob(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _recommendation_lines(plan: Plan) -> list[str]:
    from peftplan.planner.recommend import describe_config

    rec = plan.recommendation
    lines = []
    if rec.method:
        lr = rec.config.get("lr")
        lines.append(f"Recommendation: {describe_config(rec.method, rec.config)}" + (f", lr {lr:g}" if lr else ""))
    else:
        lines.append("Recommendation: none")
    lines += [f"- {reason}" for reason in rec.reasons]
    return lines


def _method_notes(methods: list[MethodPlan]) -> list[str]:
    """Each method's notes, a note shared by several methods said once."""
    owners: dict[str, list[str]] = {}
    for entry in methods:
        for note in entry.notes:
            # "prefix cannot be merged; ..." and "prompt cannot be merged; ..." are one note of two methods
            note = note.removeprefix(f"{entry.method} ")
            owners.setdefault(note, []).append(entry.method)
    return [f"note ({', '.join(names)}): {note}" for note, names in owners.items()]


def _footer(plan: Plan) -> list[str]:
    lines = [f"skipped {s['method']}: {s['reason']}" for s in plan.skipped]
    lines += [f"note: {n}" for n in plan.notes]
    lines += _method_notes(plan.methods)
    if any(e.throughput.get("hours") is None for e in plan.methods):
        lines.append(f"hint: {HOURS_HINT}")
    return lines


def _legend(tables: list[TextTable]) -> list[str]:
    return [f"{term}: {text}" if term else text for table in tables for term, text in table.legend]


def to_markdown(plan: Plan) -> str:
    tables = plan_tables(plan)
    head, step = title_segments(plan)
    out = [f"## {' '.join(head)}", "", f"Training step: {', '.join(step)}.", ""]
    for table in tables:
        out += [f"### {'; '.join(table.title)}", ""]
        out += markdown_table(table.columns, table.rows)
        out.append("")
    out += _recommendation_lines(plan)
    out.append("")
    out += [f"- {line}" for line in _footer(plan)]
    out += ["", "Legend:", ""]
    out += [f"- {line}" for line in _legend(tables)]
    return "\n".join(out) + "\n"


def print_table(plan: Plan, console: Console | None = None) -> None:
    """Print the plan as rich tables, the recommendation, the notes and a legend of the headers."""
    from rich.console import Console
    from rich.text import Text

    console = console or Console()
    for line in _title_lines(plan, console.width):
        console.print(Text(line, style="bold"), overflow="fold")
    styles = ["dim" if not e.fits else None for e in plan.methods]
    tables = plan_tables(plan)
    for table in tables:
        per_method = table.key in ("memory", "bytes", "speed", "switching")
        rows_styles = styles if per_method else [None if "✗" not in " ".join(row) else "dim" for row in table.rows]
        console.print()
        print_rich_table(console, table.columns, table.rows, title=pack(table.title, console.width, sep="; "),
                         styles=rows_styles)
    console.print()
    for line in _recommendation_lines(plan):
        print_prose(console, line, indent="  " if line.startswith("- ") else "  ")
    for line in _footer(plan):
        print_prose(console, line, style="dim")
    console.print()
    console.print(Text("Legend", style="dim bold"))
    for line in _legend(tables):
        print_prose(console, line, style="dim")
