"""``convlens occlusion`` and ``convlens invariance``: Zeiler & Fergus's sensitivity analyses (Fig. 7 and Fig. 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convlens.cli.app import app
from convlens.cli.common import DeviceOpt, ImagesArg, ModelArg, OutOpt, WeightsOpt, done, open_model

ScoreOpt = Annotated[str, typer.Option("--score", help="What a class target reads: probability (softmax, the "
                                                       "paper's) or logit.")]


@app.command("occlusion")
def occlusion_command(
    model: ModelArg,
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="One image file.")],
    out: OutOpt,
    target: Annotated[str, typer.Option("--target", help="Class index or name, or predicted (the top "
                                                         "prediction).")] = "predicted",
    score: ScoreOpt = "probability",
    window: Annotated[int | None, typer.Option("--size", "--window", help="Occluder side in input pixels "
                                                                          "(default: a seventh of the input, 32 at "
                                                                          "224).")] = None,
    stride: Annotated[int | None, typer.Option("--stride", help="Occluder step (default: a quarter of "
                                                                "--size).")] = None,
    fill: Annotated[str, typer.Option("--fill", help="mean (dataset mean), zero (black), blur (blurred image), "
                                                     "or a grey level in [0, 1].")] = "mean",
    layer: Annotated[str | None, typer.Option("--layer", help="Layer of the feature map (panel b; default: the "
                                                              "last conv layer with spatial output).")] = None,
    edges: Annotated[str, typer.Option("--edges", help="whole: only windows that fit (a ragged right/bottom edge "
                                                       "stays uncovered); captum: one more row/column of windows "
                                                       "cropped at the border, as captum's Occlusion.")] = "whole",
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Windows per forward pass (default: "
                                                                        "sized to the memory).")] = None,
    rule: Annotated[str, typer.Option("--rule", help="How panel (c) projects the feature map to pixels: "
                                                     "auto (guided on strided networks, deconvnet on pooling ones), "
                                                     "deconvnet (Zeiler & Fergus), guided or gradient.")] = "auto",
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Slide an occluder over the image: target probability, top class and a feature map's activation per
    position (Zeiler & Fergus Fig. 7), plus a per-pixel attribution map."""
    from convlens.occlusion import occlusion

    classifier = open_model(model, weights, device)
    result = occlusion(classifier, image, target=target, score=score, window=window, stride=stride, fill=fill,
                       layer=layer, edges=edges, rule=rule, batch_size=batch_size, progress=True)
    done(result.save(out))


@app.command("invariance")
def invariance_command(
    model: ModelArg,
    images: ImagesArg,
    out: OutOpt,
    transform: Annotated[list[str] | None, typer.Option("--transform", help="translate, scale or rotate; "
                                                                            "repeatable (default: all three).")] = None,
    layers: Annotated[tuple[str, str] | None, typer.Option("--layers", help="EARLY LATE layer names; NAME:input "
                                                           "reads a module's input (default: the first conv layer "
                                                           "and the input of the final classifier).")] = None,
    target: Annotated[list[str] | None, typer.Option("--target", help="True class (index or name): one for all "
                                                                      "images or one per image; repeatable "
                                                                      "(default: the top prediction).")] = None,
    score: ScoreOpt = "probability",
    points: Annotated[int | None, typer.Option("--points", help="Evenly spaced amounts per transformation over the "
                                                                "paper's ranges (default: its steps).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Transformed images per forward pass.")] = 32,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Feature distances (early and late layer) and the true-class probability under vertical translation,
    scaling and rotation (Zeiler & Fergus Fig. 5)."""
    from convlens.data.images import expand_image_args
    from convlens.invariance import TRANSFORMS, invariance

    classifier = open_model(model, weights, device)
    chosen = [name.strip() for item in (transform or TRANSFORMS) for name in item.split(",") if name.strip()]
    targets = (target[0] if len(target) == 1 else list(target)) if target else "predicted"
    result = invariance(classifier, expand_image_args(images), transforms=chosen, layers=layers, targets=targets,
                        score=score, points=points, batch_size=batch_size, progress=True)
    done(result.save(out))
