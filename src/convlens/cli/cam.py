"""``convlens cam``: class activation maps of images or a labelled folder (the methods of
``convlens.cam.METHODS``). Parses the options, calls ``convlens.cam`` and saves the result."""

from __future__ import annotations

from typing import Annotated

import typer

from convlens.cam import METHODS  # every registered method, so --help lists them
from convlens.cli.app import app
from convlens.cli.common import (
    ClassesOpt,
    CpusPerWorkerOpt,
    DeviceOpt,
    ForceOpt,
    GpusPerWorkerOpt,
    ImagesArg,
    LayerOpt,
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


@app.command("cam")
def cam_command(
    model: ModelArg,
    images: ImagesArg,
    out: OutOpt,
    method: Annotated[list[str] | None, typer.Option(
        "--method", help=f"CAM method, repeatable for a side-by-side figure: {', '.join(METHODS)}.")] = None,
    layer: LayerOpt = None,
    target: Annotated[str | None, typer.Option(
        "--target", help="Class to explain (name or index); default: each image's predicted class.")] = None,
    limit: Annotated[int | None, in_range(
        "--limit", "Images taken from each folder, evenly across its class subfolders (0: all; default 24, with "
                   "--ray all).", 0, 100_000)] = None,
    batch_size: Annotated[int, in_range(
        "--batch-size", "Images per pass; Score-CAM / Ablation-CAM: masked copies per pass.", 1, 4096)] = 16,
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
    """Where the model finds evidence for a class: CAMs overlaid on each image (default method gradcam, default
    layer the last conv layer with spatial extent; CAM finds its own). A folder with class subfolders gives a
    grid with true and predicted labels. Several --layer values are fused."""
    import warnings

    from convlens.cam import CAMWarning, cam, cam_method
    from convlens.cli.common import console

    names = method or ["gradcam"]
    for name in names:
        cam_method(name)  # unknown names fail before the model loads
    if ray is not None:
        from convlens.distributed import cam_on_ray, import_ray

        import_ray()  # without the extra: one line naming it, before the model loads
        if len(names) != 1:
            raise ConvlensError("--ray runs one --method at a time")
        # the driver only packages it; workers choose devices
        classifier = open_model(model, weights, "cpu", classes, preprocess)
        result = cam_on_ray(classifier, images, out, method=names[0], layer=layer, target=target,
                            batch_size=batch_size, limit=limit or 0, ray=ray, workers=workers,
                            gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, resume=resume,
                            progress=True)
        ray_report(result.summary())
        done(out)
        return
    limit = 24 if limit is None else limit
    check_out(out, force=force)
    classifier = open_model(model, weights, device, classes, preprocess)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CAMWarning)
        result = cam(classifier, images, method=names, layer=layer or None, target=target or "predicted",
                     batch_size=batch_size, limit=limit, progress=True)
    for warning in caught:  # one line each (also in summary.json's notes)
        if issubclass(warning.category, CAMWarning):
            console.print(f"warning: {warning.message}", markup=False, highlight=False)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    done(result.save(out, force=force))
