"""``convlens filters`` and ``convlens featuremaps``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convlens.cli.app import app
from convlens.cli.common import DeviceOpt, LayerOpt, ModelArg, OutOpt, WeightsOpt, done, open_model


@app.command("filters")
def filters_command(
    model: ModelArg,
    out: OutOpt,
    layer: LayerOpt = None,
    max_filters: Annotated[int | None, typer.Option(
        "--max", help="Filters shown per layer (default 64 tiles, or 16 rows of a filters x channels matrix).")] = None,
    reduce: Annotated[str, typer.Option(
        "--reduce", help="none: each filter's input channels as a row of tiles; mean: one tile per filter.")] = "none",
    shared_scale: Annotated[bool, typer.Option(
        "--shared-scale", help="One colour scale for the whole layer instead of one per filter.")] = False,
    max_channels: Annotated[int, typer.Option(
        "--max-channels", help="Input channels shown per filter in the filters x channels matrix.")] = 16,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Kernels of conv layers as image grids (default layer: the first conv); RGB first layers in colour."""
    from convlens.filters import run_filters

    classifier = open_model(model, weights, device)
    done(run_filters(classifier, layer, out, max_filters, reduce, shared_scale, max_channels, progress=True))


@app.command("featuremaps")
def featuremaps_command(
    model: ModelArg,
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="Image file.")],
    out: OutOpt,
    layer: LayerOpt = None,
    max_channels: Annotated[int | None, typer.Option(
        "--max", help="Channels drawn per layer (default: all).")] = None,
    order: Annotated[str, typer.Option(
        "--order", help="index: channels 0, 1, ...; activation: strongest mean activation first.")] = "index",
    per_row: Annotated[int, typer.Option("--per-row", help="Maps per layer in the overview figure.")] = 8,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Activation maps of each channel at chosen layers (default: the end of each stage) plus an overview
    with the top-3 predictions."""
    from convlens.featuremaps import run_featuremaps

    classifier = open_model(model, weights, device)
    done(run_featuremaps(classifier, image, layer, out, max_channels, order, per_row, progress=True))
