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

# Dataset-scale jobs on Ray (convlens.distributed); without --ray everything runs in this process.
RayOpt = Annotated[str | None, typer.Option(
    "--ray", metavar="local|auto|ADDRESS", help="Run on Ray: local starts Ray on this machine, auto or an address "
    "joins a cluster (needs convlens[ray]). Per-image results go to OUT/shards/*.parquet.")]
RayWorkersOpt = Annotated[int, typer.Option("--workers", help="With --ray: model workers (actors), each loading "
                                                              "the model once.")]
WorkersOrRayOpt = Annotated[int, typer.Option("--workers", help="Image-decoding worker processes (0: in process); "
                                                                "with --ray: model workers (actors, at least 1).")]
GpusPerWorkerOpt = Annotated[float, typer.Option("--gpus-per-worker", help="With --ray: GPUs per worker "
                                                                           "(fractions share a GPU).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="With --ray: keep the shards an interrupted run of the "
                                                          "same job finished (OUT.partial) and compute the rest.")]


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


def ray_report(summary: dict) -> None:
    """One line on how a job on Ray went: shards skipped by --resume, unreadable images."""
    ray = summary.get("ray", {})
    if ray.get("shards_done_before"):
        console.print(f"resumed: {ray['shards_done_before']} of {ray['shards']} shards were already done, "
                      f"{ray['images_computed']} images computed now")
    for item in summary.get("unreadable", []):
        console.print(f"[yellow]skipped[/yellow] {item['error']}", soft_wrap=True)


def done(path: Path) -> None:
    console.print(f"wrote [bold]{path}[/bold]")
