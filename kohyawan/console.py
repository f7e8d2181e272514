"""Terminal output: one rich console per stream, the ``--json`` printer, and tables that never cut a path.

Data goes to stdout; progress, warnings and errors go to stderr so ``--json`` output stays clean. See
docs/architecture.md.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, Sequence

from rich.console import Console


def out() -> Console:
    # Built per call so click's CliRunner, which swaps sys.stdout, is honoured.
    return Console(file=sys.stdout, soft_wrap=True, highlight=False)


def err() -> Console:
    return Console(file=sys.stderr, soft_wrap=True, highlight=False)


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str)


def print_json(data: Any) -> None:
    sys.stdout.write(to_json(data) + "\n")


def warn(message: str) -> None:
    from rich.markup import escape

    err().print(f"[yellow]warning:[/yellow] {escape(message)}", markup=True, highlight=False)


# -- tables ---------------------------------------------------------------------------------------------------
# A table is for reading, and some of its cells are for copying: a path, a command. rich, short of width (a pipe
# is 80 columns), cuts cells with "…" and breaks words anywhere. print_table never does either: a `keep` column
# is printed whole on one line; every other column may wrap, but only between words. When the table cannot be
# laid out that way, the kept columns move below it, one line per row; when even that does not fit, each row
# becomes a block of "header: value" lines.

@dataclass(frozen=True)
class Col:
    header: str
    keep: bool = False       # a path or a command: never cut, never wrapped
    justify: str = "left"    # "left" | "right"


def _lines(text: str) -> list[str]:
    return text.split("\n") if text else [""]


def _full(col: Col, cells: Sequence[str]) -> int:
    from rich.cells import cell_len

    return max(cell_len(line) for text in (col.header, *cells) for line in _lines(text))


def _narrowest(col: Col, cells: Sequence[str]) -> int:
    """The narrowest the column can be: its longest word, or all of it for a kept column."""
    from rich.cells import cell_len

    if col.keep:
        return _full(col, cells)
    return max([1] + [cell_len(word) for text in (col.header, *cells) for word in text.split()])


def _widths(full: list[int], least: list[int], room: int) -> list[int] | None:
    """Column widths within ``room``: wide columns give way first, none below its least; None if impossible."""
    if sum(least) > room:
        return None
    widths = list(full)
    while sum(widths) > room:
        i = max(range(len(widths)), key=lambda k: (widths[k] - least[k] > 0, widths[k]))
        widths[i] -= 1
    return widths


def _table(columns: Sequence[Col], rows: Sequence[Sequence[str]], widths: Sequence[int] | None, options: dict):
    from rich.table import Table
    from rich.text import Text

    table = Table(**options)
    for i, col in enumerate(columns):
        width = widths[i] if widths else 1
        table.add_column(col.header, justify=col.justify, width=width, min_width=width, max_width=width,
                         no_wrap=col.keep, overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def _laid_out(console: Console, columns: Sequence[Col], rows: Sequence[Sequence[str]], options: dict):
    """The table with widths that fit the console without cutting anything, or None."""
    from rich.cells import cell_len
    from rich.measure import Measurement
    from rich.text import Text

    cells = [[row[i] for row in rows] for i in range(len(columns))]
    full = [_full(c, cells[i]) for i, c in enumerate(columns)]
    least = [_narrowest(c, cells[i]) for i, c in enumerate(columns)]
    probe = _table(columns, [], [1] * len(columns), {k: v for k, v in options.items() if k != "title"})
    overhead = Measurement.get(console, console.options, probe).maximum - len(columns)
    widths = _widths(full, least, console.width - overhead)
    if widths is None:
        return None
    title = options.get("title")
    if title and max(cell_len(word) for word in str(title).split()) > sum(widths) + overhead:
        # rich would fold a long word of the title (a path) to the table's width: print it whole above instead
        console.print(Text(str(title)), soft_wrap=True)
        options = {k: v for k, v in options.items() if k != "title"}
    return _table(columns, rows, widths, options)


def print_table(columns: Sequence[Col | str], rows: Sequence[Sequence[str]], *, console: Console | None = None,
                label: int = 0, **options) -> None:
    """Print rows under ``columns`` (a header, or a Col) as a rich Table (``options`` go to it: title, box, ...)
    that never cuts a cell: see the comment above. ``label`` is the column that names a row below the table."""
    console = console or out()
    cols = [c if isinstance(c, Col) else Col(c) for c in columns]
    rows = [[str(cell) for cell in row] for row in rows]
    table = _laid_out(console, cols, rows, options)
    if table is not None:
        console.print(table, soft_wrap=False)
        return
    kept = [i for i, c in enumerate(cols) if c.keep and i != label]
    inside = [i for i in range(len(cols)) if i not in kept]
    table = _laid_out(console, [cols[i] for i in inside], [[r[i] for i in inside] for r in rows], options) \
        if kept else None
    if table is not None:
        console.print(table, soft_wrap=False)
        _print_below(console, cols, rows, kept, label)
    else:
        _print_blocks(console, cols, rows, label, options.get("title"))


def _print_below(console: Console, cols: Sequence[Col], rows: Sequence[Sequence[str]], kept: Sequence[int],
                 label: int) -> None:
    """The kept columns under the table: "<row label> <header>: <value>", one line per value line."""
    from rich.text import Text

    for row in rows:
        for i in kept:
            for line in _lines(row[i]) if row[i] else []:
                console.print(Text(f"{row[label]} {cols[i].header}: {line}"), soft_wrap=True)


def _print_blocks(console: Console, cols: Sequence[Col], rows: Sequence[Sequence[str]], label: int,
                  title: Any = None) -> None:
    """One block per row: its label, then "  header: value" lines. Always fits; nothing is cut."""
    from rich.text import Text

    if title:
        console.print(Text(str(title)), soft_wrap=True)
    named = [i for i, col in enumerate(cols) if i == label or not col.header]  # a mark column joins the label
    for row in rows:
        console.print(Text(" ".join(row[i] for i in named if row[i])), soft_wrap=True)
        for i, col in enumerate(cols):
            if i not in named and row[i]:
                console.print(Text(f"  {col.header}: " + row[i].replace("\n", ", ")), soft_wrap=True)
