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
                                                               "timm:NAME, baseline, keras:PATH, onnx:PATH, or a "
                                                               "convlens checkpoint).")]
WeightsOpt = Annotated[str | None, typer.Option("--weights", help="torchvision weights name (IMAGENET1K_V1) or a "
                                                                   "local state_dict file.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Output folder (replaced atomically).")]
ImagesArg = Annotated[list[Path], typer.Argument(metavar="IMAGE...", help="Image files or folders of images.")]
LayerOpt = Annotated[list[str] | None, typer.Option("--layer", help="Layer name (module path); repeatable.")]
ClassesOpt = Annotated[str | None, typer.Option(
    "--classes", help="Class names: a comma list, a text file (one a line), or an image folder whose subfolders "
                      "give the names in sorted order.")]
PreprocessOpt = Annotated[str | None, typer.Option(
    "--preprocess", help="Input preprocessing MODE[:INTERPOLATION]: unit (x/255), raw (0..255), tf (x/127.5-1), "
                         "torch (ImageNet mean/std), caffe (BGR minus the ImageNet mean); resize nearest by default.")]
WorkersOpt = Annotated[int, typer.Option("--workers", help="Image-decoding worker processes (0: in process).")]


def open_model(spec: str = DEFAULT_SPEC, weights: str | None = None, device: str = "auto",
               classes: str | None = None, preprocess: str | None = None) -> ImageClassifier:
    with console.status(f"loading {spec}"):
        return load_model(spec, weights=weights, device=device, classes=classes, preprocess=preprocess)


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
