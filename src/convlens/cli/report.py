"""``convlens report``: the static HTML report of a model on images (works offline, from ``file://``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convlens.cli.app import app
from convlens.cli.common import (
    ClassesOpt,
    CpusPerWorkerOpt,
    DeviceOpt,
    GpusPerWorkerOpt,
    ImagesArg,
    LayerOpt,
    ModelArg,
    PreprocessOpt,
    RayWorkersOpt,
    WeightsOpt,
    console,
    open_model,
)


def parse_units(text: str) -> int | None:
    from convlens.errors import ConvlensError

    if text.strip().lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise ConvlensError(f"--units {text!r}: give a number of units per layer, or 'all'") from None


@app.command("report")
def report_command(
    model: ModelArg,
    images: ImagesArg,
    out: Annotated[Path, typer.Option("--out", help="Report folder (replaced atomically).")] = Path("convlens-report"),
    layer: LayerOpt = None,
    units: Annotated[str, typer.Option("--units", help="Unit pages per layer (the strongest), or 'all'.")] = "16",
    k: Annotated[int, typer.Option("--k", help="Top-k images per unit.")] = 9,
    method: Annotated[list[str] | None, typer.Option("--method", help="CAM method (repeatable; default the eight "
                                                                      "classic ones).")] = None,
    cam_layer: Annotated[str | None, typer.Option("--cam-layer", help="Layer of the CAMs (default: the last "
                                                                      "spatial convolution).")] = None,
    details: Annotated[int, typer.Option("--details", help="Images that get occlusion, invariance and "
                                                           "projections (long to compute).")] = 8,
    rule: Annotated[str, typer.Option("--rule", help="Deconv rule of the unit pages: auto, deconvnet, guided, "
                                                     "gradient.")] = "auto",
    feature_viz: Annotated[bool, typer.Option("--feature-viz", help="A feature visualization per unit page "
                                                                    "(long).")] = False,
    feature_viz_layer: Annotated[list[str] | None, typer.Option(
        "--feature-viz-layer", help="Only these layers get feature visualizations (repeatable; default all).")] = None,
    feature_viz_units: Annotated[int | None, typer.Option(
        "--feature-viz-units", min=1, help="Feature visualizations for this many of each layer's unit pages, the "
                                           "strongest (default all).")] = None,
    feature_viz_steps: Annotated[int, typer.Option("--feature-viz-steps", min=1, max=100_000,
                                                   help="Adam steps per feature visualization.")] = 512,
    feature_viz_diversity: Annotated[int, typer.Option(
        "--feature-viz-diversity", min=1, max=16, help="Images per unit (a diversity set when more than 1).")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    weights: WeightsOpt = None,
    classes: ClassesOpt = None,
    preprocess: PreprocessOpt = None,
    device: DeviceOpt = "auto",
    ray: Annotated[str | None, typer.Option(
        "--ray", metavar="local|auto|ADDRESS", help="Run the pass over the images on Ray: local starts Ray on this "
        "machine, auto or an address joins a cluster (needs convlens[ray]); the same report.")] = None,
    workers: RayWorkersOpt = 1,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
    cpus_per_worker: CpusPerWorkerOpt = None,
) -> None:
    """A folder of HTML pages: the model card, a page per image, per layer and per unit; open OUT/index.html.
    With --ray the shared pass over the images (predictions, feature maps, top-k) runs on Ray workers."""
    from convlens.data.images import expand_image_args
    from convlens.report import FeatureVizOptions, report

    plan = FeatureVizOptions(tuple(feature_viz_layer) if feature_viz_layer else None, feature_viz_units,
                             feature_viz_steps, None, feature_viz_diversity) if feature_viz else False
    if ray is not None:
        from convlens.distributed import import_ray

        import_ray()  # without the extra: one line naming it, before the model loads
    classifier = open_model(model, weights, device, classes, preprocess)
    result = report(classifier, expand_image_args(images), layers=layer, units=parse_units(units), k=k,
                    methods=method, cam_layer=cam_layer, details=details, rule=rule, feature_viz=plan,
                    batch_size=batch_size, progress=True, ray=ray, workers=workers,
                    gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker)
    result.save(out, progress=True)
    console.print(f"open [bold]{(out / 'index.html').resolve().as_uri()}[/bold]")
