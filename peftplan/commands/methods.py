"""`peftplan methods`: the registered methods, their properties and (with --model) exact trainable counts."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from peftplan.commands._options import (
    AlphaOpt,
    BottleneckOpt,
    MethodOpt,
    PeftConfigOpt,
    QuantOpt,
    RankOpt,
    TargetsOpt,
    VirtualTokensOpt,
    check_format,
    method_configs,
    print_json,
)


def methods_command(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Also count trainable parameters on this model.")] = None,
    method: MethodOpt = None,
    rank: RankOpt = None,
    alpha: AlphaOpt = None,
    targets: TargetsOpt = None,
    virtual_tokens: VirtualTokensOpt = None,
    quant: QuantOpt = None,
    bottleneck: BottleneckOpt = None,
    peft_config: PeftConfigOpt = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow a model's custom code.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="table, json or markdown.")] = "table",
) -> None:
    """List PEFT methods; with --model, count each one's trainable parameters exactly."""
    check_format(fmt)
    chosen = method_configs(
        method, rank=rank, alpha=alpha, targets=targets, virtual_tokens=virtual_tokens, quant=quant,
        bottleneck=bottleneck, peft_config=peft_config,
    )
    spec = None
    if model is not None:
        from peftplan.models import get_spec

        spec = get_spec(model, trust_remote_code=trust_remote_code)
    rows: list[dict[str, Any]] = []
    for m, cfg in chosen:
        row: dict[str, Any] = {
            "method": m.name,
            "summary": m.summary,
            "mergeable": m.mergeable,
            "inference_overhead": m.inference_overhead,
            "quantized_base": m.supports_quantized_base,
            "config": cfg.model_dump(mode="json"),
        }
        if spec is not None:
            from peftplan.errors import BadInputError

            try:
                m.check(spec, cfg)
                row["trainable_params"] = m.trainable_params(spec, cfg)
                row["trainable_pct"] = 100.0 * row["trainable_params"] / spec.total_params
            except BadInputError as exc:
                if len(chosen) == 1:
                    raise
                row["trainable_params"], row["not_applicable"] = None, str(exc)
        rows.append(row)
    if fmt == "json":
        header = {"model": spec.model_id, "total_params": spec.total_params} if spec else {}
        print_json({**header, "methods": rows})
        return
    _render(rows, spec.model_id if spec else None, spec.total_params if spec else None, fmt)


def _render(rows: list[dict[str, Any]], model: str | None, total: int | None, fmt: str) -> None:
    columns = ["method"] + (["trainable", "%"] if model else []) + ["merges", "inference overhead", "k-bit base"]
    if not model:
        columns.append("summary")
    table_rows, notes = [], []
    for row in rows:
        cells = [row["method"]]
        if model:
            n = row.get("trainable_params")
            cells += [f"{n:,}" if n is not None else "n/a", f"{row['trainable_pct']:.3f}" if n is not None else "-"]
            if n is None:
                notes.append(f"{row['method']}: {row['not_applicable']}")
        cells += ["yes" if row["mergeable"] else "no", row["inference_overhead"], "yes" if row["quantized_base"] else "no"]
        if not model:
            cells.append(row["summary"])
        table_rows.append(cells)
    title = f"PEFT methods on {model} ({total:,} params)" if model and total else "PEFT methods"
    if fmt == "markdown":
        print(f"### {title}\n")
        print("| " + " | ".join(columns) + " |")
        print("|" + "---|" * len(columns))
        for cells in table_rows:
            print("| " + " | ".join(str(c) for c in cells) + " |")
        for note in notes:
            print(f"\n- {note}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right" if col in ("trainable", "%") else "left", no_wrap=col != "summary")
    for cells in table_rows:
        table.add_row(*[str(c) for c in cells])
    console = Console()
    console.print(table)
    for note in notes:
        console.print(f"[dim]{note}[/dim]", highlight=False)
