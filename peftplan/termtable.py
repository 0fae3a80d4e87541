"""Rich tables that stay whole at any terminal width: never an ellipsis in a value or a header.

A table that fits is printed as is. One that does not is split into narrower tables, each repeating
the key column(s), so every number still reads on one line. Only a single column wider than the
terminal is folded (broken across lines), never cut.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

# A prose column (a summary, a note) may wrap between words but is never narrower than this.
MIN_PROSE_WIDTH = 16


@dataclass(frozen=True)
class Column:
    """One column: a header (a second line, after "\\n", usually carries the unit) and its layout."""

    header: str
    justify: Literal["left", "right"] = "right"
    wrap: bool = False  # prose: wraps between words; other columns keep each value on one line
    min_wrap: int = MIN_PROSE_WIDTH  # the narrowest a prose column gets (never below its longest word)

    @property
    def flat_header(self) -> str:
        """The header on one line, as Markdown and JSON-ish outputs need it."""
        first, *rest = self.header.split("\n")
        for line in rest:  # "tokens" + "/s" reads "tokens/s"; "peak" + "GiB" reads "peak GiB"
            first += line if line.startswith("/") else f" {line}"
        return first


def _cell_len(text: str) -> int:
    from rich.cells import cell_len

    return max((cell_len(line) for line in text.split("\n")), default=0)


def _needed_width(column: Column, cells: Sequence[str]) -> int:
    """The narrowest the column can be without breaking a value (or, for prose, a word)."""
    header = _cell_len(column.header)
    if not column.wrap:
        return max([header, *(_cell_len(c) for c in cells)])
    words = [_cell_len(w) for c in cells for w in c.split()]
    longest_line = max([0, *(_cell_len(c) for c in cells)])
    return max([header, *words, min(column.min_wrap, longest_line)])


def _table(columns: Sequence[Column], rows: Sequence[Sequence[str]], widths: Sequence[int],
           styles: Sequence[str | None], *, fold: bool = False) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for column, width in zip(columns, widths, strict=True):
        table.add_column(column.header, justify=column.justify, no_wrap=not (column.wrap or fold),
                         overflow="fold", min_width=None if fold else width)
    for row, style in zip(rows, styles, strict=True):
        table.add_row(*row, style=style)
    return table


def _width_of(table: Table, console: Console) -> int:
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update_width(1 << 16), table).minimum


def split_columns(console: Console, columns: Sequence[Column], rows: Sequence[Sequence[str]], *,
                  key: int = 1) -> list[list[int]]:
    """Column indices of each table to print: all at once when they fit `console.width`, else as few
    groups of the non-key columns (in order) as fit, each preceded by the `key` first columns, and as
    even in width as possible (two halves rather than a full table and a lone column)."""
    from itertools import combinations

    widths = [_needed_width(c, [r[i] for r in rows]) for i, c in enumerate(columns)]
    no_styles = [None] * len(rows)
    measured: dict[tuple[int, ...], int] = {}

    def width(indices: list[int]) -> int:
        if tuple(indices) not in measured:
            sub = _table([columns[i] for i in indices], [[r[i] for i in indices] for r in rows],
                         [widths[i] for i in indices], no_styles)
            measured[tuple(indices)] = _width_of(sub, console)
        return measured[tuple(indices)]

    everything = list(range(len(columns)))
    if width(everything) <= console.width:
        return [everything]
    keys = list(range(min(key, len(columns))))
    rest = everything[len(keys):]
    greedy: list[list[int]] = []
    current: list[int] = []
    for i in rest:
        if current and width(keys + current + [i]) > console.width:
            greedy.append(current)
            current = []
        current.append(i)
    if current:
        greedy.append(current)
    best, best_width = greedy, max(width(keys + g) for g in greedy)
    cuts = list(combinations(range(1, len(rest)), len(greedy) - 1))
    for cut in cuts if len(cuts) <= 200 else []:
        bounds = [0, *cut, len(rest)]
        groups = [rest[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        widest = max(width(keys + g) for g in groups)
        if widest <= console.width and widest < best_width:
            best, best_width = groups, widest
    return [keys + g for g in best]


def print_table(console: Console, columns: Sequence[Column], rows: Sequence[Sequence[str]], *,
                title: Sequence[str] = (), key: int = 1, styles: Sequence[str | None] | None = None) -> None:
    """Print `rows` under `title` (lines, wrapped to the console) as one or more tables."""
    from rich.text import Text

    for line in title:
        console.print(Text(line, style="bold"), overflow="fold")
    styles = list(styles) if styles is not None else [None] * len(rows)
    widths = [_needed_width(c, [r[i] for r in rows]) for i, c in enumerate(columns)]
    groups = split_columns(console, columns, rows, key=key)
    for n, indices in enumerate(groups):
        sub_columns = [columns[i] for i in indices]
        sub_rows = [[r[i] for i in indices] for r in rows]
        table = _table(sub_columns, sub_rows, [widths[i] for i in indices], styles)
        if _width_of(table, console) > console.width:  # one column wider than the terminal: fold, never cut
            table = _table(sub_columns, sub_rows, [widths[i] for i in indices], styles, fold=True)
        if len(groups) > 1 and n:
            console.print(Text("(continued)", style="dim"))
        console.print(table)


def print_prose(console: Console, line: str, *, indent: str = "  ", style: str | None = None) -> None:
    """One paragraph wrapped between words to the console, continuation lines indented."""
    from rich.text import Text

    width = max(20, console.width)
    wrapped = textwrap.fill(line, width=width, subsequent_indent=indent, break_on_hyphens=False)
    console.print(Text(wrapped, style=style or ""), overflow="fold", highlight=False)


def pack(segments: Sequence[str], width: int, *, sep: str = ", ") -> list[str]:
    """Join `segments` with `sep` into lines of at most `width`, breaking only between segments."""
    lines: list[str] = []
    current = ""
    for segment in segments:
        candidate = f"{current}{sep}{segment}" if current else segment
        if current and _cell_len(candidate + sep.rstrip()) > width:
            lines.append(current + sep.rstrip())
            current = segment
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def markdown_table(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> list[str]:
    """A GitHub Markdown table, headers on one line, pipes escaped."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cell(c.flat_header) for c in columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(cell(str(c)) for c in row) + " |" for row in rows]
    return out
