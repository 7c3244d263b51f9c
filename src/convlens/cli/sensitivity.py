"""``convlens occlusion`` and ``convlens invariance``: Zeiler & Fergus's sensitivity analyses (Fig. 7 and Fig. 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convlens.cli.app import app
from convlens.cli.common import (
    BatchSizeOpt,
    ClassesOpt,
    CpusPerWorkerOpt,
    DeviceOpt,
    ForceOpt,
    GpusPerWorkerOpt,
    ImagesArg,
    ModelArg,
    OutOpt,
    PreprocessOpt,
    RayOpt,
    RayWorkersOpt,
    ResumeOpt,
    WeightsOpt,
    done,
    in_range,
    open_model,
    ray_report,
)
from convlens.errors import ConvlensError
from convlens.output import check_out

ScoreOpt = Annotated[str, typer.Option("--score", help="What a class target reads: probability (softmax, the "
                                                       "paper's) or logit.")]


@app.command("occlusion")
def occlusion_command(
    model: ModelArg,
    images: Annotated[list[Path], typer.Argument(metavar="IMAGE...", help="One image file; with --ray, image "
                                                                         "files and folders (searched recursively).")],
    out: OutOpt,
    target: Annotated[str, typer.Option("--target", help="Class index or name, or predicted (the top "
                                                         "prediction).")] = "predicted",
    score: ScoreOpt = "probability",
    window: Annotated[int | None, in_range("--size", "Occluder side in input pixels (default: a seventh of the "
                                                     "input, 32 at 224).", 1, 4096, aliases=("--window",))]
    = None,
    stride: Annotated[int | None, in_range("--stride", "Occluder step (default: a quarter of --size).", 1, 4096)]
    = None,
    fill: Annotated[str, typer.Option("--fill", help="mean (dataset mean), zero (black), blur (blurred image), "
                                                     "or a grey level in [0, 1].")] = "mean",
    layer: Annotated[str | None, typer.Option("--layer", help="Layer of the feature map (panel b; default: the "
                                                              "last conv layer with spatial output).")] = None,
    edges: Annotated[str, typer.Option("--edges", help="whole: only windows that fit (a ragged right/bottom edge "
                                                       "stays uncovered); captum: one more row/column of windows "
                                                       "cropped at the border, as captum's Occlusion.")] = "whole",
    batch_size: Annotated[int | None, in_range("--batch-size", "Windows per forward pass (default: sized to the "
                                                               "memory).", 1, 4096)] = None,
    rule: Annotated[str, typer.Option("--rule", help="How panel (c) projects the feature map to pixels: "
                                                     "auto (guided on strided networks, deconvnet on pooling ones), "
                                                     "deconvnet (Zeiler & Fergus), guided or gradient.")] = "auto",
    weights: WeightsOpt = None,
    classes: ClassesOpt = None,
    preprocess: PreprocessOpt = None,
    device: DeviceOpt = "auto",
    ray: RayOpt = None,
    workers: RayWorkersOpt = 1,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
    cpus_per_worker: CpusPerWorkerOpt = None,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
) -> None:
    """Slide an occluder over the image: target probability, top class and a feature map's activation per
    position (Zeiler & Fergus Fig. 7), plus a per-pixel attribution map. With --ray, every image of the files
    and folders given, on Ray workers: the first image's output, every image's maps in OUT/shards."""
    from convlens.occlusion import occlusion

    if ray is not None:
        from convlens.distributed import import_ray
        from convlens.distributed.occlusion import occlusion_on_ray

        import_ray()  # without the extra: one line naming it, before the model loads
        classifier = open_model(model, weights, "cpu", classes, preprocess)  # the workers choose devices
        result = occlusion_on_ray(classifier, images, out, target=target, score=score, window=window,
                                  stride=stride, fill=fill, layer=layer, edges=edges, rule=rule,
                                  batch_size=batch_size, ray=ray, workers=workers, gpus_per_worker=gpus_per_worker,
                                  cpus_per_worker=cpus_per_worker, resume=resume, progress=True)
        ray_report(result.summary())
        done(out)
        return
    if len(images) != 1:
        raise ConvlensError(f"occlusion explains one image file, got {len(images)}: for several add --ray local")
    if images[0].is_dir():
        raise ConvlensError(f"{images[0]} is a folder, not an image file: occlusion explains one image; for every "
                            "image of a folder add --ray local")
    check_out(out, force=force)
    classifier = open_model(model, weights, device, classes, preprocess)
    result = occlusion(classifier, images[0], target=target, score=score, window=window, stride=stride, fill=fill,
                       layer=layer, edges=edges, rule=rule, batch_size=batch_size, progress=True)
    done(result.save(out, force=force))


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
    points: Annotated[int | None, in_range("--points", "Evenly spaced amounts per transformation over the paper's "
                                                       "ranges (default: its steps).", 2, 1000)] = None,
    batch_size: BatchSizeOpt = 32,
    weights: WeightsOpt = None,
    classes: ClassesOpt = None,
    preprocess: PreprocessOpt = None,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
) -> None:
    """Feature distances (early and late layer) and the true-class probability under vertical translation,
    scaling and rotation (Zeiler & Fergus Fig. 5)."""
    from convlens.data.images import expand_image_args
    from convlens.invariance import TRANSFORMS, invariance

    check_out(out, force=force)
    classifier = open_model(model, weights, device, classes, preprocess)
    chosen = [name.strip() for item in (transform or TRANSFORMS) for name in item.split(",") if name.strip()]
    targets = (target[0] if len(target) == 1 else list(target)) if target else "predicted"
    result = invariance(classifier, expand_image_args(images), transforms=chosen, layers=layers, targets=targets,
                        score=score, points=points, batch_size=batch_size, progress=True)
    done(result.save(out, force=force))
