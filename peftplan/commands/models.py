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
    from peftplan.termtable import Column, markdown_table

    # Text columns first: at 80 columns the table splits into (id, architecture, license) and the numbers.
    columns = [Column("id", "left"), Column("architecture", "left"), Column("license", "left"), Column("hidden"),
               Column("layers"), Column("heads"), Column("kv\nheads"), Column("vocab"), Column("tied", "left")]
    rows = [
        [e.id, e.architecture, e.license, str(e.hidden), str(e.layers), str(e.heads), str(e.kv_heads or e.heads),
         str(e.vocab), "yes" if e.tied else "no"]
        for e in entries if e
    ]
    if fmt == "markdown":
        print("\n".join(markdown_table(columns, rows)))
        return
    from rich.console import Console

    from peftplan.termtable import print_table

    # The id is the key: a narrow terminal gets several tables, each starting with the whole id.
    print_table(Console(), columns, rows, title=[f"Offline model catalog ({len(rows)} models)"])
