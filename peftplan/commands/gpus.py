"""`peftplan gpus`: the GPU profiles `plan --gpu NAME` accepts (memory, speed, bandwidth, price)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from peftplan.commands._options import check_format, print_json


def gpu_rows(profiles_file: Path | None = None) -> list[dict[str, Any]]:
    """Every profile (built-in, the user's default file, then `profiles_file`) with the aliases naming it.

    Raises:
        BadInputError: `profiles_file` is missing or malformed.
    """
    from dataclasses import asdict

    from peftplan.budgets import load_profiles

    profiles, aliases = load_profiles(profiles_file)
    rows = []
    for key, profile in profiles.items():
        row = asdict(profile)
        row["aliases"] = sorted(alias for alias, target in aliases.items() if target == key)
        rows.append(row)
    return rows


def gpus_command(
    gpu_profiles: Annotated[Path | None, typer.Option("--gpu-profiles", help="A TOML file of extra GPU profiles "
                                                      "(as `plan --gpu-profiles`).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, json or markdown.")] = "table",
) -> None:
    """List the GPU profiles `plan --gpu NAME` accepts: memory, bf16 speed, bandwidths and an indicative price.

    A profile is named by its key, an alias or its marketing name. Add or override profiles in
    $XDG_CONFIG_HOME/peftplan/gpus.toml or a file given to --gpu-profiles, with the same keys.
    """
    from peftplan.termtable import Column, markdown_table

    check_format(fmt)
    rows = gpu_rows(gpu_profiles)
    if fmt == "json":
        print_json(rows)
        return
    # Names and aliases wrap between words, so the numbers stay in one table at 80 columns.
    columns = [Column("key", "left"), Column("aliases", "left", wrap=True, min_wrap=9),
               Column("name", "left", wrap=True, min_wrap=14), Column("VRAM\nGiB"), Column("bf16\nTFLOP/s"),
               Column("memory\nGB/s"), Column("PCIe\nGB/s"), Column("USD\n/hour")]
    cells = [
        [r["key"], ", ".join(r["aliases"]) or "-", r["name"], f"{r['vram_gib']:g}", f"{r['bf16_tflops']:g}",
         f"{r['mem_bw_gbs']:g}", f"{r['pcie_gbs']:g}", f"{r['usd_per_hour']:.2f}"]
        for r in rows
    ]
    title = [f"GPU profiles ({len(rows)})", "pass a key, alias or name to `peftplan plan --gpu`"]
    notes = [
        "VRAM: memory the driver reports as usable; bf16 TFLOP/s: dense tensor-core peak (no sparsity); memory GB/s: "
        "device bandwidth; PCIe GB/s: practical host-to-device bandwidth; USD/hour: indicative on-demand cloud "
        "price, for ordering options only.",
        "Add or override profiles with the same keys in $XDG_CONFIG_HOME/peftplan/gpus.toml or a --gpu-profiles FILE.",
    ]
    if fmt == "markdown":
        print(f"### {': '.join(title)}\n")
        print("\n".join(markdown_table(columns, cells)))
        print()
        for note in notes:
            print(f"- {note}")
        return
    from rich.console import Console

    from peftplan.termtable import pack, print_prose, print_table

    console = Console()
    print_table(console, columns, cells, title=pack(title, console.width, sep=": "))
    for note in notes:
        print_prose(console, note, style="dim")
