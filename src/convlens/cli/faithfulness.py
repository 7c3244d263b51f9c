"""``convlens faithfulness``: which explanation to trust, every method scored by every metric in one table."""

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
    ModelArg,
    OutOpt,
    PreprocessOpt,
    RayOpt,
    RayWorkersOpt,
    ResumeOpt,
    WeightsOpt,
    done,
    open_model,
    ray_report,
)


@app.command("faithfulness")
def faithfulness_command(
    model: ModelArg,
    images: ImagesArg,
    out: OutOpt,
    methods: Annotated[str, typer.Option(
        "--methods", help="all, or a comma-separated list (gradcam,scorecam,guided,occlusion,random,center,...)."
    )] = "all",
    metrics: Annotated[str | None, typer.Option(
        "--metrics", help="Comma-separated: deletion, insertion, road, drop, pointing, sanity (default: all; "
                          "pointing needs --boxes).")] = None,
    boxes: Annotated[Path | None, typer.Option(
        "--boxes", help="JSON of object boxes (the format of photos/boxes.json) for the pointing game.")] = None,
    target: Annotated[str | None, typer.Option(
        "--target", help="Class to explain (name or index); default: each image's predicted class.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Perturbed inputs per forward pass.")] = 32,
    sanity_steps: Annotated[int, typer.Option(
        "--sanity-steps", help="Checkpoints along the randomisation cascade (0: after every layer).")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Random baseline, SmoothGrad and ROAD noise, bootstrap.")] = 0,
    weights: WeightsOpt = None,
    classes: ClassesOpt = None,
    preprocess: PreprocessOpt = None,
    device: DeviceOpt = "auto",
    ray: RayOpt = None,
    workers: RayWorkersOpt = 1,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
    cpus_per_worker: CpusPerWorkerOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Score every explanation method with deletion/insertion, ROAD, average drop / increase in confidence,
    the pointing game and sanity checks; table.csv has the mean and a 95 % bootstrap interval per method. With
    --ray the images are scored on Ray workers (OUT/shards/*.parquet: every image's scores, curves and maps)."""
    from convlens.data.images import expand_image_args
    from convlens.errors import ConvlensError
    from convlens.faithfulness import faithfulness, resolve_methods, resolve_metrics

    resolve_methods(methods)  # bad names fail before the model loads
    resolve_metrics(metrics, boxes is not None)
    paths = expand_image_args(images)
    if not paths:
        raise ConvlensError("no images given")
    if ray is not None:
        from convlens.distributed import faithfulness_on_ray, import_ray

        import_ray()  # without the extra: one line naming it, before the model loads
        classifier = open_model(model, weights, "cpu", classes, preprocess)  # the workers choose devices
        result = faithfulness_on_ray(classifier, paths, out, methods=methods, metrics=metrics, boxes=boxes,
                                     target=target if target is not None else "predicted", batch_size=batch_size,
                                     sanity_steps=sanity_steps or None, seed=seed, ray=ray, workers=workers,
                                     gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, resume=resume,
                                     progress=True)
        ray_report(result.summary())
        done(out)
        return
    classifier = open_model(model, weights, device, classes, preprocess)
    result = faithfulness(classifier, [str(p) for p in paths], methods=methods, metrics=metrics, boxes=boxes,
                          target=target if target is not None else "predicted", batch_size=batch_size,
                          sanity_steps=sanity_steps or None, seed=seed, progress=True)
    done(result.save(out))
