"""Tables for people (stripe_sync.ops.tables): boxes on a terminal; piped, plain
aligned text within 80 columns, or one record per line, never a word broken."""

from __future__ import annotations

import io

from rich.console import Console

from stripe_sync.ops.tables import plain, show_table

HEADERS = ("due by", "dispute", "amount", "reason")
ROWS = [("2031-05-01 00:00 UTC", "1", "900 usd", "fraudulent"), ("-", "12", "40 eur", "")]


def test_columns_that_fit_are_aligned() -> None:
    lines = plain("disputes", HEADERS, ROWS, right=(1,))
    assert lines == [
        "disputes",
        "due by                dispute  amount   reason",
        "2031-05-01 00:00 UTC        1  900 usd  fraudulent",
        "-                          12  40 eur",
    ]


def test_columns_that_cannot_fit_are_one_record_per_line() -> None:
    rows = [("2031-05-01 00:00 UTC", "1", "900 usd", "fraudulent " * 6), ("-", "2", "1 eur", "")]
    lines = plain("disputes", HEADERS, rows, width=80)
    assert lines == [
        "disputes",
        "due by: 2031-05-01 00:00 UTC; dispute: 1; amount: 900 usd; reason: " + "fraudulent " * 6,
        "due by: -; dispute: 2; amount: 1 eur",  # an empty cell is left out
    ]


def piped() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=80), out


def test_piped_a_long_record_is_one_line_whatever_the_width() -> None:
    console, out = piped()
    rows = [("2031-05-01 00:00 UTC", "dp_" + "x" * 40, "900 usd", "fraudulent")]
    show_table(console, "disputes", HEADERS, rows)
    lines = out.getvalue().splitlines()
    assert lines[0] == "disputes" and len(lines) == 2
    assert lines[1].endswith("reason: fraudulent") and "│" not in lines[1]


def test_on_a_terminal_a_box() -> None:
    out = io.StringIO()
    show_table(Console(file=out, width=100, force_terminal=True), "disputes", HEADERS, ROWS)
    assert "━━━━┳" in out.getvalue() and "│ 2031-05-01 00:00 UTC │" in out.getvalue()
