"""``convlens convert MODEL --out DIR``: a Keras, ONNX (or any loadable) model as a convlens checkpoint."""

from __future__ import annotations

from convlens.cli.app import app
from convlens.cli.common import ClassesOpt, ForceOpt, ModelArg, OutOpt, PreprocessOpt, WeightsOpt, console, done


@app.command("convert")
def convert_command(
    model: ModelArg,
    out: OutOpt,
    weights: WeightsOpt = None,
    classes: ClassesOpt = None,
    preprocess: PreprocessOpt = None,
    force: ForceOpt = False,
) -> None:
    """Write MODEL as a convlens checkpoint (safetensors + JSON with class names and preprocessing) that later
    loads with neither Keras nor ONNX installed: `convlens predict DIR IMAGE...`."""
    from convlens.models.convert import convert
    from convlens.output import check_out

    check_out(out, force=force, command="convert")
    with console.status(f"converting {model}"):
        path = convert(model, out, weights=weights, classes=classes, preprocess=preprocess, force=force)
    done(path)
