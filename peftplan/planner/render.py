"""A Plan as text: a rich table (with a fit bar against the budget) or Markdown. JSON is `Plan.to_dict`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peftplan.planner.plan import MethodPlan, Plan

GIB = 1 << 30
BAR_WIDTH = 8


def gib(n: int | float) -> str:
    return f"{n / GIB:.2f}"


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


def _title(plan: Plan) -> str:
    ctx, budget = plan.ctx, plan.budget
    gpus = f"{budget.gpus} x " if budget.gpus > 1 else ""
    # Several GPUs without sharding is data parallel: each holds the whole step plus DDP's buckets.
    shard = f", {ctx.shard}" if ctx.shard != "none" else (", ddp" if budget.gpus > 1 else "")
    return (f"{plan.spec.model_id} ({plan.spec.total_params / 1e9:.2f} B params) on {gpus}{budget.vram_gib:.1f} GiB"
            f" ({budget.gpu.key if budget.compute_from_profile else 'vram'}{shard}) | seq {ctx.seq_len} x batch "
            f"{ctx.batch_size}, {ctx.dtype}, {ctx.optimizer}, {ctx.attention}"
            f"{', grad-ckpt' if ctx.grad_checkpointing else ''}")


def _short(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _pct(x: float) -> str:
    return f"{x:.2g}%" if x < 10 else f"{x:.0f}%"


_MEMORY = ["method", "trainable", "peak", "total", "fit", "batch", "seq", "rank"]
_BYTES = ["method", "weights", "quant", "adapter", "grads", "optim", "activ", "logits", "peaks at"]
_COST = ["method", "file", "tok/s", "hours", "$", "swap ms", "N tasks", "inference"]
_LEFT = ("method", "fit", "peaks at", "inference", "trainable")


def _memory_row(entry: MethodPlan, budget: int) -> list[str]:
    return [
        entry.method,
        f"{_short(entry.trainable_params)} {_pct(entry.trainable_pct)}",
        gib(entry.memory.peak_allocated),
        gib(entry.memory.total),
        ("✓ " if entry.fits else "✗ ") + fit_bar(entry.memory.total, budget),
        str(entry.max_batch_size),
        str(entry.max_seq_len),
        "-" if entry.max_rank is None else str(entry.max_rank),
    ]


def _bytes_row(entry: MethodPlan) -> list[str]:
    bpp = entry.bytes_per_param()
    return [entry.method] + [f"{bpp[name]:.2f}" for name in COMPONENT_ORDER] + [entry.peak_moment]


def _cost_row(entry: MethodPlan) -> list[str]:
    speed = entry.throughput
    switch = entry.task_switching
    inference = entry.inference
    overhead = "none" if inference.get("kind") == "none" else f"+{inference.get('extra_flops_pct', 0):.2g}%"
    if entry.mergeable and inference.get("kind") == "unmerged-matmul":
        overhead += ", 0 merged"
    return [
        entry.method,
        human_bytes(entry.adapter_bytes),
        f"{speed['tokens_per_second']:,.0f}",
        "-" if speed.get("hours") is None else f"{speed['hours']:.2f}",
        "-" if speed.get("cost_usd") is None else f"{speed['cost_usd']:,.2f}",
        f"{switch['swap_seconds'] * 1000:.0f}",
        human_bytes(switch["storage_bytes"]),
        overhead,
    ]


COMPONENT_ORDER = ("weights", "quant_constants", "adapter", "gradients", "optimizer", "activations", "logits")


def _tables(plan: Plan) -> list[tuple[str, list[str], list[list[str]]]]:
    budget = plan.budget.vram_bytes
    return [
        (_title(plan) + "\nGiB per GPU; fit: total against the budget; batch, seq, rank: the largest that fit",
         _MEMORY, [_memory_row(e, budget) for e in plan.methods]),
        ("Bytes per model parameter at the peak", _BYTES, [_bytes_row(e) for e in plan.methods]),
        (f"Speed (MFU {_mfu(plan):.0%}), cost, and {plan.tasks} task(s) by {plan.switching}; inference: extra FLOPs",
         _COST, [_cost_row(e) for e in plan.methods]),
    ]


def _mfu(plan: Plan) -> float:
    return float(plan.methods[0].throughput["mfu"]) if plan.methods else 0.0


def _recommendation_lines(plan: Plan) -> list[str]:
    rec = plan.recommendation
    lines = []
    if rec.method:
        knobs = ", ".join(f"{k}={v}" for k, v in rec.config.items() if k in ("rank", "alpha", "targets", "quant", "lr",
                                                                          "virtual_tokens", "bottleneck"))
        lines.append(f"Recommendation: {rec.method}" + (f" ({knobs})" if knobs else ""))
    else:
        lines.append("Recommendation: none")
    lines += [f"  - {reason}" for reason in rec.reasons]
    return lines


def _footer(plan: Plan) -> list[str]:
    lines = [f"skipped {s['method']}: {s['reason']}" for s in plan.skipped]
    lines += [f"note: {n}" for n in plan.notes]
    lines.append("peak = predicted torch.cuda.max_memory_allocated of a steady-state step; total = allocator "
                 "reserve + CUDA context, what fit is judged on.")
    return lines


def to_markdown(plan: Plan) -> str:
    out: list[str] = []
    for title, columns, rows in _tables(plan):
        out += [f"### {title.splitlines()[0]}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        out.append("")
    out += _recommendation_lines(plan)
    out.append("")
    out += [f"- {line}" for line in _footer(plan)]
    return "\n".join(out) + "\n"


def print_table(plan: Plan, console: Any = None) -> None:
    """Print the plan as rich tables (memory and fit, bytes per parameter, cost) and the recommendation."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    from rich import box

    for title, columns, rows in _tables(plan):
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
        for col in columns:
            table.add_column(col, justify="left" if col in _LEFT else "right", no_wrap=True)
        for row, entry in zip(rows, plan.methods, strict=True):
            table.add_row(*row, style=None if entry.fits else "dim")
        console.print(table)
    for line in _recommendation_lines(plan):
        console.print(line, highlight=False)
    for line in _footer(plan):
        console.print(line, style="dim", highlight=False)
