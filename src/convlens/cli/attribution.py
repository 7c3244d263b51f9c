"""``convlens attribution``: pixel attributions (saliency, guided backprop, deconvnet, SmoothGrad, Integrated
Gradients, Guided Grad-CAM)."""

from __future__ import annotations

from typing import Annotated

import typer

from convlens.cli.app import app
from convlens.cli.common import (
    ClassesOpt,
    DeviceOpt,
    ImagesArg,
    ModelArg,
    OutOpt,
    PreprocessOpt,
    WeightsOpt,
    done,
    open_model,
)


@app.command("attribution")
def attribution_command(
    model: ModelArg,
    images: ImagesArg,
    out: OutOpt,
    method: Annotated[str, typer.Option(
        "--method", help="saliency, guided, deconvnet, smoothgrad, integrated-gradients or guided-gradcam.")
    ] = "smoothgrad",
    target: Annotated[str | None, typer.Option(
        "--target", help="Class to explain (name or index); default: each image's predicted class.")] = None,
    samples: Annotated[int, typer.Option("--samples", help="SmoothGrad: noisy copies per image.")] = 50,
    noise_level: Annotated[float, typer.Option(
        "--noise-level", help="SmoothGrad: noise std as a fraction of each image's value range.")] = 0.15,
    steps: Annotated[int, typer.Option("--steps", help="Integrated Gradients: integration steps.")] = 50,
    layer: Annotated[str | None, typer.Option("--layer", help="Guided Grad-CAM: the Grad-CAM layer.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Inputs per forward/backward pass.")] = 32,
    seed: Annotated[int, typer.Option("--seed", help="SmoothGrad's noise.")] = 0,
    weights: WeightsOpt = None,
    classes: ClassesOpt = None,
    preprocess: PreprocessOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Which input pixels the class score depends on, by the chosen attribution method."""
    from convlens.attribution import attribution, method_name
    from convlens.data.images import expand_image_args
    from convlens.errors import ConvlensError

    method_name(method)  # bad names fail before the model loads
    paths = expand_image_args(images)
    if not paths:
        raise ConvlensError("no images given")
    classifier = open_model(model, weights, device, classes, preprocess)
    result = attribution(classifier, [str(p) for p in paths], method=method,
                         target=target if target is not None else "predicted", samples=samples,
                         noise_level=noise_level, steps=steps, layer=layer, batch_size=batch_size, seed=seed,
                         progress=True)
    done(result.save(out))
