"""What ``stripe-sync reconcile`` shows while it collects: a progress bar on
stderr when that is a terminal, nothing otherwise. The report itself renders
once the run is over (``reconcile.Report.render``); this is only the live part,
kept out of the domain logic, which just calls back."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Watcher(NamedTuple):
    """The callbacks ``reconcile.run`` takes."""

    on_start: Callable[[dict[str, int]], None]  # mappings to check, per family
    on_checked: Callable[[str, Sequence[Any]], None]  # one object of that family checked


def _ignore(*_: Any) -> None:
    pass


@contextmanager
def reconcile_progress() -> Iterator[Watcher]:
    err = Console(stderr=True, highlight=False)
    if not err.is_terminal:
        yield Watcher(_ignore, _ignore)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(
        *columns, console=err, transient=True, redirect_stdout=False, redirect_stderr=False
    ) as progress:
        task = progress.add_task("checking mappings", total=None)

        def on_start(totals: dict[str, int]) -> None:
            progress.update(task, total=sum(totals.values()))

        def on_checked(noun: str, _drift: Sequence[Any]) -> None:
            progress.update(task, advance=1, description=f"checking {noun}s")

        yield Watcher(on_start, on_checked)


@contextmanager
def backfill_progress() -> Iterator[Callable[[str, int], None]]:
    """``backfill.run``'s ``on_page``: objects imported so far, per family, on a
    terminal (Stripe's lists have no totals, so a count and a pulse, no bar's end)."""
    err = Console(stderr=True, highlight=False)
    if not err.is_terminal:
        yield _ignore
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f} objects"),
        TimeElapsedColumn(),
    )
    with Progress(
        *columns, console=err, transient=True, redirect_stdout=False, redirect_stderr=False
    ) as progress:
        task = progress.add_task("backfill", total=None)

        def on_page(family: str, imported: int) -> None:
            progress.update(task, advance=imported, description=f"importing {family}")

        yield on_page
