"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from convlens.models import DEFAULT_SPEC, ImageClassifier, load_model

T = TypeVar("T")
console = Console(stderr=True)
MAX_BATCH = 4096
MAX_TOP = 1000

def in_range(flag: str, help: str, low: float | None = None, high: float | None = None, *,
             low_open: bool = False, high_open: bool = False, aliases: tuple[str, ...] = (), **kwargs):
    """A numeric option checked before any work: a value outside the range fails with one line naming the
    option and the range (exit 2). Repeatable options are checked value by value."""
    text = range_text(low, high, low_open, high_open)

    def check(value):
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None and not in_bounds(item, low, high, low_open, high_open):
                raise typer.BadParameter(f"{item} is not in the range {text}")
        return value

    return typer.Option(flag, *aliases, help=f"{help} [{text}]", callback=check, **kwargs)


def in_bounds(value, low=None, high=None, low_open=False, high_open=False) -> bool:
    if low is not None and (value < low or (low_open and value == low)):
        return False
    return not (high is not None and (value > high or (high_open and value == high)))


def range_text(low=None, high=None, low_open=False, high_open=False) -> str:
    left = "" if low is None else f"{low}{'<' if low_open else '<='}"
    right = "" if high is None else f"{'<' if high_open else '<='}{high}"
    return f"{left}x{right}"


def check_device(value: str | None) -> str | None:
    """``--device``: auto, cpu, cuda, cuda:N or mps; anything else fails before the model loads."""
    from convlens.models.loading import DEVICE_CHOICES, valid_device

    if value is not None and not valid_device(value):
        raise typer.BadParameter(f"{value!r} is not one of {DEVICE_CHOICES}")
    return value


ModelArg = Annotated[str, typer.Argument(metavar="MODEL", help="Model spec (efficientnet_lite0, torchvision:NAME, "
                                                               "timm:NAME, baseline, keras:PATH, onnx:PATH, or a "
                                                               "convlens checkpoint).")]
WeightsOpt = Annotated[str | None, typer.Option("--weights", help="torchvision weights name (IMAGENET1K_V1) or a "
                                                                   "local state_dict file.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.", callback=check_device)]
OutOpt = Annotated[Path, typer.Option("--out", help="Output folder (replaced atomically when it is an earlier "
                                                    "convlens output; anything else needs --force).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace --out even when it holds files convlens did not "
                                                        "write (never a training run, the current or home folder).")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Stop at the first unreadable image instead of skipping "
                                                          "it and reporting it.")]
ImagesArg = Annotated[list[Path], typer.Argument(metavar="IMAGE...", help="Image files or folders of images.")]
LayerOpt = Annotated[list[str] | None, typer.Option("--layer", help="Layer name (module path); repeatable.")]
ClassesOpt = Annotated[str | None, typer.Option(
    "--classes", help="Class names: a comma list, a text file (one a line), or an image folder whose subfolders "
                      "give the names in sorted order.")]
PreprocessOpt = Annotated[str | None, typer.Option(
    "--preprocess", help="Input preprocessing MODE[:INTERPOLATION]: unit (x/255), raw (0..255), tf (x/127.5-1), "
                         "torch (ImageNet mean/std), caffe (BGR minus the ImageNet mean); resize nearest by default.")]
WorkersOpt = Annotated[int, in_range("--workers", "Image-decoding worker processes (0: in process).", 0, 64)]
BatchSizeOpt = Annotated[int, in_range("--batch-size", "Images per forward pass.", 1, MAX_BATCH)]
TopOpt = Annotated[int, in_range("--top", "How many classes per image.", 1, MAX_TOP)]

# Dataset-scale jobs on Ray (convlens.distributed); without --ray everything runs in this process.
RayOpt = Annotated[str | None, typer.Option(
    "--ray", metavar="local|auto|ADDRESS", help="Run on Ray: local starts Ray on this machine, auto or an address "
    "joins a cluster (needs convlens[ray]). Per-image results go to OUT/shards/*.parquet.")]
RayWorkersOpt = Annotated[int, in_range("--workers", "With --ray: model workers (actors), each loading the model "
                                                     "once.", 1, 1024)]
WorkersOrRayOpt = Annotated[int, in_range("--workers", "Image-decoding worker processes (0: in process); with "
                                                       "--ray: model workers (actors, at least 1).", 0, 1024)]
GpusPerWorkerOpt = Annotated[float, in_range("--gpus-per-worker", "With --ray: GPUs per worker (fractions share a "
                                                                  "GPU).", 0, 64)]
CpusPerWorkerOpt = Annotated[float | None, in_range(
    "--cpus-per-worker", "With --ray: CPU cores (and torch threads) per worker; default: on a local Ray the "
    "machine's cores shared among the workers, on a cluster 1.", 0, 4096, low_open=True)]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="With --ray: keep the shards an interrupted run of the "
                                                          "same job finished (OUT.partial) and compute the rest.")]


def open_model(spec: str = DEFAULT_SPEC, weights: str | None = None, device: str = "auto",
               classes: str | None = None, preprocess: str | None = None) -> ImageClassifier:
    with console.status(f"loading {spec}"):
        model = load_model(spec, weights=weights, device=device, classes=classes, preprocess=preprocess)
    warn_if_untrained(model)
    return model


def warn_if_untrained(model: ImageClassifier) -> None:
    """One loud line on every command whose model has random weights (its output means nothing)."""
    if model.weights == "random":
        warning(f"{model.spec} has random weights (no --weights given): its predictions and explanations "
                "are meaningless; the figures are marked UNTRAINED")


def warning(message: str) -> None:
    console.print(f"[bold yellow]warning:[/bold yellow] {message}", soft_wrap=True, highlight=False)


def track(items: Iterable[T], total: int | None = None, description: str = "working",
          enabled: bool = True) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr (a plain loop when ``enabled`` is False): the library's own."""
    from convlens.progress import track as library_track

    return library_track(items, total, description, progress=enabled)


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
