"""``convlens filters`` and ``convlens featuremaps``: parse, call the library, save the result."""

from __future__ import annotations

from typing import Annotated

import typer

from convlens.cli.app import app
from convlens.cli.common import (
    ClassesOpt,
    DeviceOpt,
    ForceOpt,
    ImagesArg,
    LayerOpt,
    ModelArg,
    OutOpt,
    PreprocessOpt,
    WeightsOpt,
    done,
    in_range,
    open_model,
)
from convlens.output import check_out


@app.command("filters")
def filters_command(
    model: ModelArg,
    out: OutOpt,
    layer: LayerOpt = None,
    max_filters: Annotated[int | None, in_range(
        "--max", "Filters shown per layer (default 64 tiles, 16 rows of a filters x channels matrix, or all "
                 "rows of a 1x1 layer's matrix).", 1, 100_000)] = None,
    reduce: Annotated[str, typer.Option(
        "--reduce", help="none: each filter's input channels as a row of tiles; mean: one tile per filter "
                         "(1x1 layers are always one matrix of weights).")] = "none",
    shared_scale: Annotated[bool, typer.Option(
        "--shared-scale", help="One colour scale for the whole layer instead of one per filter.")] = False,
    max_channels: Annotated[int | None, in_range(
        "--max-channels", "Input channels shown per filter (default 16 in the filters x channels matrix, "
                          "all in a 1x1 layer's matrix).", 1, 100_000)] = None,
    weights: WeightsOpt = None,
    classes: ClassesOpt = None,
    preprocess: PreprocessOpt = None,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
) -> None:
    """Kernels of conv layers as image grids (default layer: the first conv); RGB first layers in colour, 1x1
    layers as one filters x input-channels matrix."""
    from convlens.filters import filters

    check_out(out, force=force)
    classifier = open_model(model, weights, device, classes, preprocess)
    result = filters(classifier, layer, max_filters=max_filters, reduce=reduce, shared_scale=shared_scale,
                     max_channels=max_channels, progress=True)
    done(result.save(out, force=force))


@app.command("featuremaps")
def featuremaps_command(
    model: ModelArg,
    images: ImagesArg,
    out: OutOpt,
    layer: LayerOpt = None,
    max_channels: Annotated[int, in_range(
        "--max", "Channels drawn per layer grid (default 64; 0 draws all).", 0, 100_000)] = 64,
    order: Annotated[str, typer.Option(
        "--order", help="activation: strongest mean activation first; index: channels 0, 1, ...")] = "activation",
    per_row: Annotated[int, in_range("--per-row", "Maps per layer in the overview figure.", 1, 64)] = 8,
    weights: WeightsOpt = None,
    classes: ClassesOpt = None,
    preprocess: PreprocessOpt = None,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
) -> None:
    """Activation maps of each channel at chosen layers (default: the end of each stage) plus an overview
    with the top-3 predictions, for each image."""
    from convlens.data.images import expand_image_args
    from convlens.featuremaps import feature_maps

    check_out(out, force=force)
    classifier = open_model(model, weights, device, classes, preprocess)
    result = feature_maps(classifier, expand_image_args(images), layer, max_channels=max_channels or None,
                          order=order, per_row=per_row, progress=True)
    done(result.save(out, force=force))
