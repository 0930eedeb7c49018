"""Tables for people: Rich's boxes on a terminal; piped (a file, ``| less``,
a mail from cron), plain aligned text that fits 80 columns, or, when the
columns cannot fit, one record per line. Never a word broken across lines.

``status`` and the demo's summary print with it; the daemon never imports it
(rich: see ``queue_counts.py``).
"""

from __future__ import annotations

from collections.abc import Container, Sequence

from rich.console import Console
from rich.table import Table

# What a pipe gets: the classic terminal width, whatever COLUMNS says.
PLAIN_WIDTH = 80
_GAP = "  "


def show_table(
    console: Console,
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Container[int] = (),
) -> None:
    """``rows`` under ``headers``; the columns whose index is in ``right`` right-aligned."""
    if console.is_terminal:
        table = Table(title=title, title_justify="left", title_style="bold")
        for i, header in enumerate(headers):
            table.add_column(header, justify="right" if i in right else "left", overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    else:
        # soft_wrap: Rich would otherwise break a line at the console's width.
        console.print("\n".join(plain(title, headers, rows, right=right)), soft_wrap=True,
                      markup=False, highlight=False)  # fmt: skip


def plain(
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Container[int] = (),
    width: int = PLAIN_WIDTH,
) -> list[str]:
    """The lines of a table as plain text: aligned columns when they fit ``width``,
    else one record per line (``header: value; header: value``)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    if len(_GAP) * (len(widths) - 1) + sum(widths) <= width:

        def line(cells: Sequence[str]) -> str:
            return _GAP.join(
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        return [title, line(headers), *(line(r) for r in rows)]
    return [
        title,
        *("; ".join(f"{h}: {c}" for h, c in zip(headers, r, strict=True) if c) for r in rows),
    ]
