"""``convlens predict`` and ``convlens layers``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from convlens.cli.app import app
from convlens.cli.common import (
    ClassesOpt,
    DeviceOpt,
    ImagesArg,
    ModelArg,
    PreprocessOpt,
    WeightsOpt,
    console,
    done,
    open_model,
)
from convlens.data.images import expand_image_args
from convlens.layers import layer_table
from convlens.output import output_dir
from convlens.predict import predict, probabilities


@app.command("predict")
def predict_command(
    model: ModelArg,
    images: ImagesArg,
    top: Annotated[int, typer.Option("--top", help="How many classes per image.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Also write arrays.npz and summary.json here.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    classes: ClassesOpt = None,
    preprocess: PreprocessOpt = None,
) -> None:
    """Top-K classes and probabilities for each image, batched."""
    classifier = open_model(model, weights, device, classes, preprocess)
    paths = expand_image_args(images)
    results = predict(classifier, paths, top=top, batch_size=batch_size)
    rows = [{"image": str(path), "predictions": [p.to_dict() for p in preds]} for path, preds in
            zip(paths, results, strict=True)]
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        table = Table("image", *[f"#{i + 1}" for i in range(top)])
        for path, preds in zip(paths, results, strict=True):
            table.add_row(path.name, *[f"{p.name} {100 * p.probability:.2f}%" for p in preds])
        console.print(table) if console.is_terminal else typer.echo(_plain(paths, results))
    if out is not None:
        with output_dir(out, "predict") as folder:
            inputs = classifier.prepare(paths)
            with folder.timed():
                probs = probabilities(classifier, inputs, batch_size)
            folder.add_arrays(input=inputs, probabilities=probs)
            folder.update(inputs=[str(p) for p in paths], model=classifier.describe(), top=top, predictions=rows)
        done(out)


def _plain(paths, results) -> str:
    lines = []
    for path, preds in zip(paths, results, strict=True):
        lines.append(f"{path}: " + ", ".join(f"{p.name} {100 * p.probability:.2f}%" for p in preds))
    return "\n".join(lines)


@app.command("layers")
def layers_command(
    model: ModelArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    weights: WeightsOpt = None,
    device: DeviceOpt = "cpu",
    classes: ClassesOpt = None,
    preprocess: PreprocessOpt = None,
) -> None:
    """Every named module: type, output shape at the model's input size, parameter count."""
    classifier = open_model(model, weights, device, classes, preprocess)
    rows = layer_table(classifier)
    if as_json:
        print(json.dumps({"model": classifier.describe(), "layers": [r.to_dict() for r in rows]}, indent=2))
        return
    table = Table("layer", "type", "output shape", "parameters",
                  title=f"{classifier.spec}  input {classifier.input_size[0]}x{classifier.input_size[1]}")
    for row in rows:
        shape = "x".join(map(str, row.output_shape)) if row.output_shape is not None else "-"
        table.add_row(row.name, row.type, shape, f"{row.parameters:,}")
    console.print(table) if console.is_terminal else typer.echo(
        "\n".join(f"{r.name}\t{r.type}\t{r.output_shape}\t{r.parameters}" for r in rows))
