"""Progress reporting, a library concern: every long call takes ``progress=False | True | callback``.

``False`` (the default) reports nothing; ``True`` draws a rich progress bar on stderr; a callable receives
``(description, done, total)`` after each step (``total`` is None when unknown), for a GUI, a web app or a log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
ProgressCallback = Callable[[str, int, int | None], None]
ProgressLike = bool | ProgressCallback | None


def track(items: Iterable[T], total: int | None = None, description: str = "working",
          progress: ProgressLike = False) -> Iterator[T]:
    """Iterate over ``items``, reporting each finished step as ``progress`` asks."""
    if not progress:
        yield from items
        return
    if callable(progress):
        progress(description, 0, total)
        for done, item in enumerate(items, 1):
            yield item
            progress(description, done, total)
        return
    with rich_progress() as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


def rich_progress():
    """A transient rich progress bar on stderr (elapsed and remaining time, done of total)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=True)


def report(progress: ProgressLike, description: str, done: int, total: int | None) -> None:
    """One progress event outside a loop (for callbacks; a rich bar needs ``track``)."""
    if callable(progress) and not isinstance(progress, bool):
        progress(description, done, total)
