"""``convlens deconv``, ``convlens topk`` and ``convlens evolution``: Zeiler & Fergus's visualisations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convlens.cli.app import app
from convlens.cli.common import DeviceOpt, ModelArg, OutOpt, WeightsOpt, WorkersOpt, done, open_model
from convlens.errors import ConvlensError

OneLayerOpt = Annotated[str, typer.Option("--layer", help="Layer name (module path, see `convlens layers`).")]
RuleOpt = Annotated[str, typer.Option("--rule", help="How ReLUs pass the signal down: deconvnet (Zeiler & "
                                                     "Fergus), guided (guided backprop) or gradient (saliency).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Images per batch.")]


@app.command("deconv")
def deconv_command(
    model: ModelArg,
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="One image file.")],
    layer: OneLayerOpt,
    out: OutOpt,
    unit: Annotated[list[int] | None, typer.Option("--unit", help="Channel to project; repeatable.")] = None,
    top: Annotated[int | None, typer.Option("--top", help="Project the N channels with the largest "
                                                           "activation instead.")] = None,
    position: Annotated[str, typer.Option("--position", help="map: feed the channel's whole map down; max: "
                                                             "only its strongest activation.")] = "map",
    rule: RuleOpt = "deconvnet",
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Project channels of a layer to pixel space (Zeiler & Fergus deconvnet, guided backprop or gradient)."""
    from convlens.data import load_image
    from convlens.deconv import (
        POSITIONS,
        check_rule,
        project_activations,
        projection_image,
        strongest_position,
        strongest_units,
        unit_activations,
    )

    check_rule(rule)
    if position not in POSITIONS:
        raise ConvlensError(f"--position {position!r}: use one of {', '.join(POSITIONS)}")
    if unit and top is not None:
        raise ConvlensError("give either --unit (repeatable) or --top N, not both")
    classifier = open_model(model, weights, device)
    picture = load_image(image)
    with _output(out, "deconv") as folder:
        inputs = classifier.prepare([picture])
        with folder.timed():
            activations = unit_activations(classifier, inputs, layer)[0]
            if activations.dim() < 2:
                raise ConvlensError(f"layer {layer!r} has output shape {tuple(activations.shape)}: choose a "
                                    "layer with channel maps")
            channels = activations.shape[0]
            units = strongest_units(activations, top) if top is not None else list(unit or [])
            if not units:
                units = strongest_units(activations, 1)
            bad = [u for u in units if not 0 <= u < channels]
            if bad:
                raise ConvlensError(f"--unit {bad[0]} out of range: layer {layer!r} has {channels} channels")
            peaks = [strongest_position(activations[u]) for u in units]
            where = peaks if position == "max" else [None] * len(units)
            projections = project_activations(classifier, inputs.expand(len(units), -1, -1, -1), layer, units,
                                              where, rule)
        display = classifier.preprocessing.to_display(inputs[0])
        for u, projection in zip(units, projections, strict=True):
            _save_image(folder.file(f"projection_unit{u:04d}.png"), projection_image(projection))
        figure = _projections_figure(display, projections, units, activations, peaks, layer, rule, position)
        folder.save_figure(figure, "projections")
        folder.add_arrays(input=inputs, projection=projections, units=units,
                          peak=[float(activations[u][p]) for u, p in zip(units, peaks, strict=True)],
                          peak_position=[list(p) for p in peaks])
        folder.update(inputs=[str(image)], model=classifier.describe(), layer=layer, units=units, rule=rule,
                      position=position, top=top, layer_output_shape=list(activations.shape),
                      peaks=[{"unit": u, "value": float(activations[u][p]), "position": list(p)}
                             for u, p in zip(units, peaks, strict=True)])
    done(out)


@app.command("topk")
def topk_command(
    model: ModelArg,
    data_dir: Annotated[Path, typer.Argument(metavar="DATA_DIR", help="Folder of images (searched recursively).")],
    layer: OneLayerOpt,
    out: OutOpt,
    k: Annotated[int, typer.Option("--k", help="Strongest activations kept per unit.")] = 9,
    units: Annotated[str, typer.Option("--units", help="Channels: START:STOP[:STEP] or a list like 3,7,12.")]
    = "0:16",
    rule: RuleOpt = "deconvnet",
    batch_size: BatchOpt = 32,
    workers: WorkersOpt = 0,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Each unit's top-k activations across a folder: patches under its receptive field beside their deconv
    projections (Zeiler & Fergus Fig. 2)."""
    from convlens.topk import top_activations, top_examples, top_examples_figure

    classifier = open_model(model, weights, device)
    with _output(out, "topk") as folder:
        with folder.timed():
            top = top_activations(classifier, data_dir, layer, units, k, batch_size, workers, progress=True)
            examples = top_examples(classifier, top, rule, progress=True)
        folder.save_figure(top_examples_figure(examples), "topk")
        folder.add_arrays(input=examples.inputs, input_images=examples.input_images, units=top.units,
                          values=top.values, images=top.images, positions=top.positions, boxes=examples.boxes,
                          patches=examples.patches, projections=examples.projections)
        folder.update(inputs=[str(data_dir)], images_scanned=len(top.paths), model=classifier.describe(),
                      layer=layer, units=top.units, k=k, rule=rule, batch_size=batch_size,
                      layer_map_size=list(top.map_size), receptive_field=examples.field.to_dict(),
                      top=_top_table(top))
    done(out)


@app.command("evolution")
def evolution_command(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="Training run folder with snapshots/.")],
    images: Annotated[Path, typer.Argument(metavar="IMAGE-or-DATA_DIR", help="One image or a folder.")],
    layer: OneLayerOpt,
    out: OutOpt,
    units: Annotated[str, typer.Option("--units", help="Channels: START:STOP[:STEP] or a list like 3,7,12.")]
    = "0:8",
    rule: RuleOpt = "deconvnet",
    batch_size: BatchOpt = 32,
    workers: WorkersOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """The strongest projection of chosen units at each training snapshot (Zeiler & Fergus Fig. 4)."""
    from convlens.evolution import evolution, evolution_figure
    from convlens.models.loading import resolve_device

    with _output(out, "evolution") as folder:
        with folder.timed():
            result = evolution(run_dir, images, layer, units, rule, batch_size, workers, resolve_device(device),
                               progress=True)
        folder.save_figure(evolution_figure(result), "evolution")
        folder.add_arrays(input=result.inputs, input_images=result.input_images, units=result.units,
                          epochs=result.epochs, values=result.values, images=result.images,
                          positions=result.positions, boxes=result.boxes, projections=result.projections,
                          patches=result.patches)
        folder.update(inputs=[str(images)], run_dir=str(run_dir), snapshots=[str(p) for p in result.snapshots],
                      model=result.model_description, layer=layer, units=result.units, epochs=result.epochs,
                      rule=rule, receptive_field=result.field.to_dict(),
                      strongest=[{"unit": unit, "epoch": epoch, "value": float(result.values[u, e]),
                                  "image": str(result.paths[int(result.images[u, e])]),
                                  "position": result.positions[u, e].tolist()}
                                 for u, unit in enumerate(result.units) for e, epoch in enumerate(result.epochs)])
    done(out)


def _output(out: Path, command: str):
    from convlens.output import output_dir

    return output_dir(out, command)


def _save_image(path: Path, pixels) -> None:
    import matplotlib.pyplot as plt

    plt.imsave(path, pixels)


def _top_table(top) -> list[dict]:
    rows = []
    for u, unit in enumerate(top.units):
        rows.append({"unit": unit, "top": [
            {"image": str(top.paths[int(top.images[u, r])]), "value": float(top.values[u, r]),
             "position": [int(top.positions[u, r, 0]), int(top.positions[u, r, 1])]}
            for r in range(top.k) if int(top.images[u, r]) >= 0]})
    return rows


def _projections_figure(display, projections, units, activations, peaks, layer, rule, position):
    from convlens.deconv import projection_image
    from convlens.render import image_grid

    tiles = [display] + [projection_image(p) for p in projections]
    titles = ["input"] + [f"unit {u}  max {float(activations[u][p]):.3g}\nat {tuple(p)}"
                          for u, p in zip(units, peaks, strict=True)]
    what = "whole map" if position == "map" else "strongest activation"
    return image_grid(tiles, titles, ncols=min(len(tiles), 5), tile_inches=2.0,
                      suptitle=f"{layer}: {rule} projections ({what} fed down)")

