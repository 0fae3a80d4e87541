"""`peftplan methods`: the registered methods, their properties and (with --model) exact trainable counts."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from peftplan.commands._options import MethodOptions, check_format, option_groups, print_json


@option_groups
def methods_command(
    *,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Also count trainable parameters on this model.")] = None,
    adapter: MethodOptions,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow a model's custom code.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="table, json or markdown.")] = "table",
) -> None:
    """List PEFT methods; with --model, count each one's trainable parameters exactly."""
    check_format(fmt)
    from peftplan.api import method_configs

    chosen = method_configs(**adapter.to_dict())
    spec = None
    if model is not None:
        from peftplan.models import get_spec

        spec = get_spec(model, trust_remote_code=trust_remote_code)
    rows: list[dict[str, Any]] = []
    for m, cfg in chosen:
        row: dict[str, Any] = {
            "method": m.name,
            "summary": m.summary,
            "mergeable": m.traits.mergeable,
            "inference_overhead": m.traits.inference_overhead,
            "quantized_base": m.traits.quantized_base,
            "config": cfg.model_dump(mode="json"),
        }
        if spec is not None:
            from peftplan.errors import BadInputError
            from peftplan.methods.targets import UnusableTargetError

            try:
                m.check(spec, cfg)
                row["trainable_params"] = m.trainable_params(spec, cfg)
                row["trainable_pct"] = 100.0 * row["trainable_params"] / spec.total_params
            except BadInputError as exc:
                # A target no method can use (e.g. a typo) is bad input for all, never "n/a" for each.
                if len(chosen) == 1 or isinstance(exc, UnusableTargetError):
                    raise
                row["trainable_params"], row["not_applicable"] = None, str(exc)
        rows.append(row)
    if fmt == "json":
        header = {"model": spec.model_id, "total_params": spec.total_params} if spec else {}
        print_json({**header, "methods": rows})
        return
    _render(rows, spec.model_id if spec else None, spec.total_params if spec else None, fmt)


def _render(rows: list[dict[str, Any]], model: str | None, total: int | None, fmt: str) -> None:
    from peftplan.termtable import Column, markdown_table

    columns = [Column("method", "left")]
    if model:
        columns += [Column("trainable\nparams"), Column("%")]
    columns += [Column("merges", "left"), Column("inference\noverhead", "left"), Column("k-bit\nbase", "left")]
    if not model:
        columns.append(Column("summary", "left", wrap=True))
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
        table_rows.append([str(c) for c in cells])
    title = f"PEFT methods on {model} ({total:,} params)" if model and total else "PEFT methods"
    if fmt == "markdown":
        print(f"### {title}\n")
        print("\n".join(markdown_table(columns, table_rows)))
        for note in notes:
            print(f"\n- {note}")
        return
    from rich.console import Console

    from peftplan.termtable import print_prose, print_table

    console = Console()
    print_table(console, columns, table_rows, title=[title])
    for note in notes:
        print_prose(console, note, style="dim")
