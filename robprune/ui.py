"""User-facing output: rich progress bars and tables. ``enabled=False`` (quiet mode, CI) prints nothing."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")


def console() -> Console:
    return Console(stderr=True)


def track(items: Iterable[T], description: str, *, total: int | None = None, enabled: bool = True,
          status: Callable[[], str] | None = None) -> Iterator[T]:
    """Iterate ``items`` with a progress bar on stderr (transient); silent when ``enabled`` is False or
    stderr is not a terminal (a log redirected to a file would get a blank line per bar otherwise).
    status: called after each item; its text follows the description (e.g. running counts)."""
    err = console()
    if not enabled or not err.is_terminal:
        yield from items
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        if status is None:
            yield from progress.track(items, total=total, description=description)
            return
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.update(task, advance=1, description=f"{description} {status()}")
