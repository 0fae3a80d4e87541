"""`peftplan models`: the offline catalog of architectures."""

from __future__ import annotations

from typing import Annotated

import typer

from peftplan.commands._options import check_format, print_json


def models_command(
    fmt: Annotated[str, typer.Option("--format", help="table, json or markdown.")] = "table",
) -> None:
    """List the models of the offline catalog (usable as --model without network)."""
    from dataclasses import asdict

    from peftplan.models.catalog import catalog_entry, catalog_ids

    check_format(fmt)
    entries = [catalog_entry(model_id) for model_id in catalog_ids()]
    if fmt == "json":
        print_json([{k: v for k, v in asdict(e).items() if k != "extra"} for e in entries if e])
        return
    columns = ["id", "architecture", "hidden", "layers", "heads", "kv heads", "vocab", "tied", "license"]
    rows = [
        [e.id, e.architecture, e.hidden, e.layers, e.heads, e.kv_heads or e.heads, e.vocab, "yes" if e.tied else "no", e.license]
        for e in entries if e
    ]
    if fmt == "markdown":
        print("| " + " | ".join(columns) + " |")
        print("|" + "---|" * len(columns))
        for row in rows:
            print("| " + " | ".join(str(c) for c in row) + " |")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Offline model catalog ({len(rows)} models)")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*[str(c) for c in row])
    Console().print(table)
