"""``convlens predict`` and ``convlens layers``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from convlens.cli.app import app
from convlens.cli.common import (
    BatchSizeOpt,
    ClassesOpt,
    DeviceOpt,
    ForceOpt,
    ImagesArg,
    ModelArg,
    PreprocessOpt,
    StrictOpt,
    TopOpt,
    WeightsOpt,
    console,
    done,
    open_model,
    warning,
)
from convlens.data.images import expand_image_args, load_readable
from convlens.errors import ConvlensError
from convlens.layers import layer_table
from convlens.output import check_out, output_dir


@app.command("predict")
def predict_command(
    model: ModelArg,
    images: ImagesArg,
    top: TopOpt = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Also write arrays.npz and summary.json here "
                                                           "(predict prints its results; the folder is optional).")]
    = None,
    batch_size: BatchSizeOpt = 32,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    classes: ClassesOpt = None,
    preprocess: PreprocessOpt = None,
    force: ForceOpt = False,
    strict: StrictOpt = False,
) -> None:
    """Top-K classes and probabilities for each image, batched. Unreadable files in a folder are skipped and
    reported (--strict stops at the first)."""
    from convlens.predict import probabilities, top_k

    if out is not None:
        check_out(out, force=force)  # before any work
    paths = expand_image_args(images)
    classifier = open_model(model, weights, device, classes, preprocess)
    skipped: list[tuple[Path, str]] = []
    kept, rows, results, inputs, chunks = [], [], [], [], []
    named = [Path(p) for p in images if not Path(p).is_dir()]  # files named on the command line must load
    readable = load_readable(paths, strict=strict, skipped=skipped, required=named)
    for batch in _batches(readable, batch_size):
        batch_inputs = classifier.prepare([image for _, image in batch])
        probs = probabilities(classifier, batch_inputs, batch_size)
        kept += [path for path, _ in batch]
        results += top_k(classifier, probs, top)
        if out is not None:
            inputs.append(batch_inputs.cpu())
            chunks.append(probs)
    if not kept:
        raise ConvlensError(f"none of the {len(paths)} images could be read (first: {skipped[0][1]})")
    _report_skipped(skipped)
    rows = [{"image": str(path), "predictions": [p.to_dict() for p in preds]} for path, preds in
            zip(kept, results, strict=True)]
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        columns = max(len(preds) for preds in results)
        table = Table("image", *[f"#{i + 1}" for i in range(columns)])
        for path, preds in zip(kept, results, strict=True):
            table.add_row(path.name, *[f"{p.name} {100 * p.probability:.2f}%" for p in preds])
        console.print(table) if console.is_terminal else typer.echo(_plain(kept, results))
    if out is not None:
        import torch

        with output_dir(out, "predict", force=force) as folder:
            with folder.timed():
                stacked = torch.cat(chunks)
            folder.add_arrays(input=torch.cat(inputs), probabilities=stacked)
            folder.update(inputs=[str(p) for p in kept], model=classifier.describe(), top=top, predictions=rows,
                          unreadable_images_skipped=[{"image": str(p), "reason": r} for p, r in skipped])
        done(out)


def _batches(items, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _report_skipped(skipped: list[tuple[Path, str]]) -> None:
    if skipped:
        warning(f"skipped {len(skipped)} unreadable image(s), first {skipped[0][1]} (--strict stops at the first)")


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
