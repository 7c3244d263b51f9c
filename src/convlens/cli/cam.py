"""``convlens cam``: class activation maps (CAM, Grad-CAM, Grad-CAM++, XGrad-CAM, Layer-CAM, Score-CAM,
Eigen-CAM, Ablation-CAM) of images or a labelled folder."""

from __future__ import annotations

from typing import Annotated

import typer

from convlens.errors import ConvlensError

from convlens.cli.app import app
from convlens.cli.common import (
    DeviceOpt,
    GpusPerWorkerOpt,
    ImagesArg,
    LayerOpt,
    ModelArg,
    OutOpt,
    RayOpt,
    RayWorkersOpt,
    ResumeOpt,
    WeightsOpt,
    done,
    open_model,
    ray_report,
)

METHOD_NAMES = "cam, gradcam, gradcam++, xgradcam, layercam, scorecam, eigencam, ablationcam"


@app.command("cam")
def cam_command(
    model: ModelArg,
    images: ImagesArg,
    out: OutOpt,
    method: Annotated[list[str] | None, typer.Option(
        "--method", help=f"CAM method, repeatable for a side-by-side figure: {METHOD_NAMES}.")] = None,
    layer: LayerOpt = None,
    target: Annotated[str | None, typer.Option(
        "--target", help="Class to explain (name or index); default: each image's predicted class.")] = None,
    limit: Annotated[int | None, typer.Option(
        "--limit", help="Images taken from each folder, evenly across its class subfolders (0: all; default 24, "
                        "with --ray all).")] = None,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", help="Images per pass; Score-CAM / Ablation-CAM: masked copies per pass.")] = 16,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    ray: RayOpt = None,
    workers: RayWorkersOpt = 1,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
    resume: ResumeOpt = False,
) -> None:
    """Where the model finds evidence for a class: CAMs overlaid on each image (default method gradcam, default
    layer the last conv layer with spatial extent; CAM finds its own). A folder with class subfolders gives a
    grid with true and predicted labels. Several --layer values are fused."""
    from convlens.cam.methods import cam_method
    from convlens.cam.run import run_cam

    names = method or ["gradcam"]
    for name in names:
        cam_method(name)  # unknown names fail before the model loads
    if ray is not None:
        from convlens.distributed import cam_on_ray, import_ray

        import_ray()  # without the extra: one line naming it, before the model loads
        if len(names) != 1:
            raise ConvlensError("--ray runs one --method at a time")
        classifier = open_model(model, weights, "cpu")  # the driver only packages it; workers choose devices
        result = cam_on_ray(classifier, images, out, method=names[0], layer=layer, target=target,
                            batch_size=batch_size, limit=limit or 0, ray=ray, workers=workers,
                            gpus_per_worker=gpus_per_worker, resume=resume, progress=True)
        ray_report(result.summary())
        done(out)
        return
    classifier = open_model(model, weights, device)
    done(run_cam(classifier, images, out, names, layer, target, batch_size, 24 if limit is None else limit,
                 progress=True))
