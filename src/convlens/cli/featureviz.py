"""``convlens featureviz``: feature visualization of units of a layer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convlens.cli.app import app
from convlens.cli.common import (
    ClassesOpt,
    DeviceOpt,
    ForceOpt,
    ModelArg,
    OutOpt,
    PreprocessOpt,
    WeightsOpt,
    done,
    in_range,
    open_model,
)
from convlens.errors import ConvlensError


def parse_units(text: str | None) -> list[int] | None:
    """``0:16`` (a range), ``3,7,9`` (a list) or a mix (``0:4,9``); None for the default (the first 16)."""
    if text is None:
        return None
    units: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if ":" in part:
                start, stop = (int(v) for v in part.split(":", 1))
                if stop <= start:
                    raise ValueError
                units += range(start, stop)
            elif part:
                units.append(int(part))
        except ValueError:
            raise ConvlensError(f"--units {text!r}: give a range START:STOP (STOP > START), a list 3,7,9, "
                                "or both (0:4,9)") from None
    if not units:
        raise ConvlensError("--units: no units given")
    return units


@app.command("featureviz")
def featureviz_command(
    model: ModelArg,
    out: OutOpt,
    layer: Annotated[str | None, typer.Option("--layer", help="Layer (module path); omit with --objective class.")]
    = None,
    units: Annotated[str | None, typer.Option(
        "--units", help="Units (channels, or classes for --objective class): 0:16, 3,7,9 or 0:4,9. Default the "
                        "first 16.")] = None,
    objective: Annotated[str, typer.Option(
        "--objective", help="channel (mean over positions), neuron (the centre position), class (a logit).")]
    = "channel",
    steps: Annotated[int, typer.Option("--steps", min=1, max=100_000, help="Adam steps.")] = 512,
    size: Annotated[int | None, typer.Option(
        "--size", min=8, max=1024, help="Image side in pixels (default: the model's input size).")] = None,
    transforms: Annotated[str, typer.Option(
        "--transforms", help="Transformation robustness: lucid (Lucid's pad 12, jitter 8 and 4 px, scale, "
                             "rotation), scaled (the pad and jitters scaled from 224 px to the image size: small "
                             "inputs), none.")] = "lucid",
    diversity: Annotated[int, typer.Option(
        "--diversity", min=1, max=16, help="Images per unit, pushed apart by a Gram-matrix penalty.")] = 1,
    reference: Annotated[list[Path] | None, typer.Option(
        "--reference", help="Natural images (files or folders) each unit's visualization is compared with.")]
    = None,
    seed: Annotated[int, in_range("--seed", "Random seed (same seed, same images).", 0, 2**32 - 1)] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=4096, help="Images optimised at once.")]
    = 64,
    weights: WeightsOpt = None,
    classes: ClassesOpt = None,
    preprocess: PreprocessOpt = None,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
) -> None:
    """The image each unit responds to most (Lucid's recipe), beside its best natural images when given."""
    from convlens.featureviz import feature_viz, named_robustness
    from convlens.output import check_out

    named_robustness(transforms, 32)  # an unknown name: one line before the model loads
    check_out(out, force=force)
    chosen = parse_units(units)
    classifier = open_model(model, weights, device, classes, preprocess)
    result = feature_viz(classifier, layer, chosen, objective=objective, steps=steps, size=size,
                         robustness=named_robustness(transforms, size or min(classifier.input_size)),
                         diversity=diversity, reference=list(reference) if reference else None, seed=seed,
                         batch_size=batch_size, progress=True)
    done(result.save(out, force=force))
