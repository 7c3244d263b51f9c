"""The figures of docs/featureviz.md: per layer, units' feature visualizations beside their top-9 image patches.

    python docs/scripts/featureviz_grid.py MODEL --images DIR [DIR ...] [--skimage-photos] --layers L1 L2 L3 \
        --out PREFIX [--units 8] [--steps 512] [--size PX] [--transforms lucid|scaled|none] [--weights ...]

Byte-identical image files are counted once (the leaf data's validation folder repeats 172 training files), so
a top-9 does not show one photo twice. Per layer, the units drawn are the ``--units`` strongest by the mean of
their top-9 activations over the images (a dead unit shows nothing). Writes ``PREFIX-LAYER.png`` per layer and
prints each unit's numbers as JSON lines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np

import convlens
from convlens.data.images import list_images
from convlens.featureviz import TRANSFORMS, named_robustness
from convlens.featureviz.figures import examples_figure
from convlens.zeiler.topk import scan_top


def distinct_images(folders: list[str]) -> list[Path]:
    """The images of the folders, one file per distinct content (SHA-256 of the bytes), first seen kept."""
    seen, kept = set(), []
    for folder in folders:
        for path in list_images(folder):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                kept.append(path)
    return kept


def strongest_units(model, paths: list[Path], layer: str, count: int) -> list[int]:
    table = scan_top(model, paths, layer, units=None, k=9)
    strength = np.nan_to_num(table.values.numpy(), nan=0.0).mean(axis=1)
    return sorted(int(u) for u in np.asarray(table.units)[np.argsort(-strength, kind="stable")[:count]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--images", nargs="+", required=True)
    parser.add_argument("--skimage-photos", action="store_true",
                        help="add scikit-image's coffee, chelsea, astronaut and rocket (as the demo writes them)")
    parser.add_argument("--layers", nargs="+", required=True)
    parser.add_argument("--out", required=True, help="prefix of the PNG files")
    parser.add_argument("--units", type=int, default=8)
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--transforms", choices=TRANSFORMS, default="lucid")
    parser.add_argument("--weights")
    parser.add_argument("--classes")
    parser.add_argument("--preprocess")
    parser.add_argument("--label", help="the model's name in the figures' titles")
    args = parser.parse_args()
    options = {key: value for key in ("weights", "classes", "preprocess") if (value := getattr(args, key))}
    model = convlens.load_model(args.model, device="cpu", **options)
    paths = distinct_images(args.images)
    if args.skimage_photos:
        from convlens.demo import sample_photos

        paths += sample_photos(Path(tempfile.mkdtemp(prefix="convlens-photos-")))
    print(json.dumps({"model": args.model, "distinct_images": len(paths)}))
    for layer in args.layers:
        units = strongest_units(model, paths, layer, args.units)
        top = convlens.top_activations(model, paths, layer, units=units, k=9)
        result = convlens.feature_viz(model, layer, units, steps=args.steps, size=args.size, reference=paths,
                                      robustness=named_robustness(args.transforms, args.size or min(model.input_size)))
        figure = examples_figure(result, top, label=args.label)
        figure.savefig(f"{args.out}-{layer}.png", dpi=110, bbox_inches="tight")
        for entry in result.summary()["units"]:
            print(json.dumps({"layer": layer, **entry, "seconds": round(result.seconds, 1)}))


if __name__ == "__main__":
    main()
