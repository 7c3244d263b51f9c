"""The table of docs/faithfulness.md: every method on the default model, the shared photos with boxes plus
scikit-image's coffee and chelsea. ``python -m bench.faithfulness_table OUT`` (sizes chosen to finish in under an
hour on the shared 2-core CPU; see docs/faithfulness.md for what they change)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

import convlens
from bench.inputs import SHARED_DATA
from convlens.demo import sample_photos

# one masked forward pass per channel (1,280 per image at conv_head), times 35 noisy samples for SS-CAM and 10 for
# IS-CAM: about 85 s per image for Score-CAM alone on the shared CPU (see docs/faithfulness.md)
EXPENSIVE = ("scorecam", "sscam", "iscam")
SETTINGS = {
    "step": 224 * 16,  # 14 steps instead of RISE's 224 (the AUC on a 15-point curve)
    "percentiles": (50,),  # ROAD at half the pixels removed only (each 224 x 224 solve takes seconds here)
    "sanity_steps": 2,  # the cascade checked after the classifier alone and after all 99 layers
    "options": {"smoothgrad": {"samples": 10}, "integrated-gradients": {"steps": 16},
                "occlusion": {"window": 56, "stride": 28}},
}


ORDER = ("random", "center", "gradcam", "cam", "gradcam++", "xgradcam", "layercam", "eigencam", "ablationcam",
         "hirescam", "gradcamelementwise", "eigengradcam", "kpcacam", "shapleycam", "finercam", "fullgrad",
         "smoothgradcam++", "scorecam", "sscam", "iscam", "saliency", "guided", "deconvnet", "guided-gradcam",
         "integrated-gradients", "smoothgrad", "occlusion")


def main(out: str, only: list[str] | None = None) -> None:
    """One method per call (the table is per method, so the rows are those of one call with every method);
    each method's folder is written as soon as it is done, and a method whose folder exists is skipped (a run
    cut short resumes). ``only``: these methods (default every method but the expensive ones)."""
    torch.set_num_threads(2)
    photos = Path(os.environ.get("CONVLENS_PHOTOS", SHARED_DATA / "photos"))
    boxed = ["dog.jpg", "eagle.jpg", "giraffe.jpg", "golden_retriever.jpeg", "squirrel_cls.jpg"]
    images = [str(photos / name) for name in boxed]
    images += [str(p) for p in sample_photos(Path(out) / "skimage-photos", ("coffee", "chelsea"))]
    model = convlens.load_model("efficientnet_lite0", device="cpu")
    methods = [m for m in ORDER if m in convlens.faithfulness.method_names()]
    methods += [m for m in convlens.faithfulness.method_names() if m not in methods]
    methods = only or [m for m in methods if m not in EXPENSIVE]
    start = time.time()
    header = None
    for method in methods:
        if (Path(out) / method / "arrays.npz").exists():
            continue
        result = convlens.faithfulness(model, images, methods=[method], boxes=photos / "boxes.json", **SETTINGS)
        result.save(Path(out) / method)
        lines = result.csv().splitlines()
        if header is None:
            header = lines[0]
            print(header, flush=True)
        print(lines[1], flush=True)
        print(f"# {method} done at {time.time() - start:.0f} s", flush=True)


def markdown(out: str) -> str:
    """The docs table from the per-method folders: mean [95 % interval] per score, recomputed from the
    per-image scores in each ``arrays.npz``."""
    import json

    import numpy as np

    from convlens.faithfulness.table import bootstrap_class_mean, bootstrap_mean, higher_is_better, score_names

    scores = score_names(["deletion", "insertion", "road", "drop", "pointing", "sanity"])
    lines = ["| method | " + " | ".join(f"{s} {'↑' if higher_is_better(s) else '↓'}" for s in scores) + " |",
             "|---" * (len(scores) + 1) + "|"]
    for method in ORDER:
        folder = Path(out) / method
        if not (folder / "arrays.npz").exists():
            continue
        arrays = np.load(folder / "arrays.npz")
        objects = [o["object"] for o in json.loads((folder / "summary.json").read_text())["objects"]]
        cells = []
        for score in scores:
            values = arrays[f"{score}.{method}"]
            if values.ndim == 2:  # folders written before the curves got their own name: checkpoints x images
                with np.errstate(all="ignore"):
                    values = np.nanmean(values, axis=0)
            mean, low, high = bootstrap_class_mean(values, objects) if score == "pointing" else bootstrap_mean(values)
            cells.append(f"{mean:.3f} [{low:.3f}, {high:.3f}]")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "--table":
        print(markdown(sys.argv[2]))
    else:
        main(sys.argv[1], sys.argv[2].split(",") if len(sys.argv) > 2 else None)
