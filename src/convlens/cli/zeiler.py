"""``convlens deconv``, ``convlens topk`` and ``convlens evolution``: Zeiler & Fergus's visualisations.

Each command parses its options, calls ``convlens.zeiler``'s function and saves the result."""

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
    ModelArg,
    OutOpt,
    PreprocessOpt,
    RayOpt,
    ResumeOpt,
    StrictOpt,
    WeightsOpt,
    WorkersOpt,
    WorkersOrRayOpt,
    done,
    in_range,
    open_model,
    ray_report,
    warning,
)
from convlens.output import check_out

OneLayerOpt = Annotated[str, typer.Option("--layer", help="Layer name (module path, see `convlens layers`).")]
RuleOpt = Annotated[str, typer.Option("--rule", help="How ReLUs pass the signal down: auto (guided on networks "
                                                     "with strided convolutions, else deconvnet), deconvnet "
                                                     "(Zeiler & Fergus), guided (guided backprop) or gradient "
                                                     "(saliency).")]
PROJECTIONS_ON = {"auto": None, "ray": True, "driver": False}


def _projections_on(value: str) -> str:
    if value not in PROJECTIONS_ON:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(PROJECTIONS_ON)}")
    return value


ProjectionsOnOpt = Annotated[str, typer.Option(
    "--projections-on", metavar="auto|ray|driver", callback=_projections_on,
    help="With --ray: where the winners' projections run: on Ray actors, on the driver (this process), or auto "
         "(on Ray from RAY_PROJECTIONS_FROM = 1,024 projections, units x k, on; below that starting the actors "
         "costs more than the projections).")]
UnitsOpt = Annotated[str, typer.Option("--units", help="Channels: START:STOP[:STEP] or a list like 3,7,12.")]


@app.command("deconv")
def deconv_command(
    model: ModelArg,
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="One image file.")],
    layer: OneLayerOpt,
    out: OutOpt,
    unit: Annotated[list[int] | None, in_range("--unit", "Channel to project; repeatable.", 0, 1_000_000)] = None,
    top: Annotated[int | None, in_range("--top", "Project the N channels with the largest activation instead.",
                                        1, 4096)] = None,
    position: Annotated[str, typer.Option("--position", help="map: feed the channel's whole map down; max: "
                                                             "only its strongest activation.")] = "map",
    rule: RuleOpt = "auto",
    weights: WeightsOpt = None,
    classes: ClassesOpt = None,
    preprocess: PreprocessOpt = None,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
) -> None:
    """Project channels of a layer to pixel space (Zeiler & Fergus deconvnet, guided backprop or gradient)."""
    from convlens.zeiler import deconv

    check_out(out, force=force)
    classifier = open_model(model, weights, device, classes, preprocess)
    result = deconv(classifier, image, layer, units=unit or None, top=top, position=position, rule=rule,
                    progress=True)
    done(result.save(out, force=force))


@app.command("topk")
def topk_command(
    model: ModelArg,
    data_dir: Annotated[Path, typer.Argument(metavar="DATA_DIR", help="Folder of images (searched recursively).")],
    layer: OneLayerOpt,
    out: OutOpt,
    k: Annotated[int, in_range("--k", "Strongest activations kept per unit.", 1, 1000)] = 9,
    units: UnitsOpt = "0:16",
    rule: RuleOpt = "auto",
    batch_size: BatchSizeOpt = 32,
    workers: WorkersOrRayOpt = 0,
    weights: WeightsOpt = None,
    classes: ClassesOpt = None,
    preprocess: PreprocessOpt = None,
    device: DeviceOpt = "auto",
    ray: RayOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
    cpus_per_worker: CpusPerWorkerOpt = None,
    projections_on: ProjectionsOnOpt = "auto",
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    strict: StrictOpt = False,
) -> None:
    """Each unit's top-k activations across a folder: patches under its receptive field beside their deconv
    projections (Zeiler & Fergus Fig. 2)."""
    from convlens.zeiler import top_activations

    if ray is not None:
        from convlens.distributed import import_ray, topk_on_ray

        import_ray()  # without the extra: one line naming it, before the model loads
        # the driver scans nothing; workers choose devices
        classifier = open_model(model, weights, "cpu", classes, preprocess)
        result = topk_on_ray(classifier, data_dir, layer, out, units=units, k=k, rule=rule, batch_size=batch_size,
                             ray=ray, workers=max(1, workers), gpus_per_worker=gpus_per_worker,
                             cpus_per_worker=cpus_per_worker, resume=resume, progress=True,
                             projections_on_ray=PROJECTIONS_ON[projections_on])
        ray_report(result.summary())
        done(out)
        return
    check_out(out, force=force)
    classifier = open_model(model, weights, device, classes, preprocess)
    result = top_activations(classifier, data_dir, layer, units=units, k=k, rule=rule, batch_size=batch_size,
                             num_workers=workers, progress=True, strict=strict)
    if result.skipped:
        warning(f"skipped {len(result.skipped)} unreadable image(s), first {result.skipped[0][1]} (--strict stops "
                "at the first)")
    done(result.save(out, force=force))


@app.command("evolution")
def evolution_command(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="Training run folder with snapshots/.")],
    images: Annotated[Path, typer.Argument(metavar="IMAGE-or-DATA_DIR", help="One image or a folder.")],
    layer: OneLayerOpt,
    out: OutOpt,
    units: UnitsOpt = "0:8",
    rule: RuleOpt = "auto",
    batch_size: BatchSizeOpt = 32,
    workers: WorkersOpt = 0,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
) -> None:
    """The strongest projection of chosen units at each training snapshot (Zeiler & Fergus Fig. 4)."""
    from convlens.models.loading import resolve_device
    from convlens.zeiler import evolution

    check_out(out, force=force)
    result = evolution(run_dir, images, layer, units=units, rule=rule, batch_size=batch_size, num_workers=workers,
                       device=resolve_device(device), progress=True)
    done(result.save(out, force=force))
