"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from convlens.models import DEFAULT_SPEC, ImageClassifier, load_model

T = TypeVar("T")
console = Console(stderr=True)

ModelArg = Annotated[str, typer.Argument(metavar="MODEL", help="Model spec (efficientnet_lite0, torchvision:NAME, "
                                                               "timm:NAME, baseline, or a convlens checkpoint).")]
WeightsOpt = Annotated[str | None, typer.Option("--weights", help="torchvision weights name (IMAGENET1K_V1) or a "
                                                                   "local state_dict file.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Output folder (replaced atomically).")]
ImagesArg = Annotated[list[Path], typer.Argument(metavar="IMAGE...", help="Image files or folders of images.")]
LayerOpt = Annotated[list[str] | None, typer.Option("--layer", help="Layer name (module path); repeatable.")]
WorkersOpt = Annotated[int, typer.Option("--workers", help="Image-decoding worker processes (0: in process).")]


def open_model(spec: str = DEFAULT_SPEC, weights: str | None = None, device: str = "auto") -> ImageClassifier:
    with console.status(f"loading {spec}"):
        return load_model(spec, weights=weights, device=device)


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=True)


def track(items: Iterable[T], total: int | None = None, description: str = "working",
          enabled: bool = True) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr (a plain loop when ``enabled`` is False)."""
    if not enabled:
        yield from items
        return
    with progress_bar() as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


def done(path: Path) -> None:
    console.print(f"wrote [bold]{path}[/bold]")
