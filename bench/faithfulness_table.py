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


def _scores() -> list[str]:
    from convlens.faithfulness.table import score_names

    return score_names(["deletion", "insertion", "road", "drop", "pointing", "sanity"])


def measured_cells(folder: Path) -> list[tuple[float, float, float]]:
    """Mean and 95 % interval per score, recomputed from the per-image scores in a method's ``arrays.npz``."""
    import json

    import numpy as np

    from convlens.faithfulness.table import bootstrap_class_mean, bootstrap_mean

    method = folder.name
    arrays = np.load(folder / "arrays.npz")
    objects = [o["object"] for o in json.loads((folder / "summary.json").read_text())["objects"]]
    cells = []
    for score in _scores():
        values = arrays[f"{score}.{method}"]
        cells.append(bootstrap_class_mean(values, objects) if score == "pointing" else bootstrap_mean(values))
    return cells


def previous_rows(doc: Path) -> dict[str, list[tuple[float, float, float]]]:
    """The rows of the table in ``doc`` (``| method | mean [low, high] | ...``), to keep the rows of an earlier
    run with the same settings that this run did not repeat."""
    import re

    rows = {}
    cell = re.compile(r"(-?[0-9.]+) \[(-?[0-9.]+), (-?[0-9.]+)\]")
    for line in doc.read_text().splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if len(parts) == len(_scores()) + 1 and all(cell.fullmatch(p) for p in parts[1:]):
            rows[parts[0].strip("*† ")] = [tuple(float(v) for v in cell.fullmatch(p).groups()) for p in parts[1:]]
    return rows


def table_rows(out: str, doc: Path | None = None) -> list[tuple[str, list[tuple[float, float, float]] | None, str]]:
    """``(method, cells or None, source)`` in ORDER: measured in ``out``, else the earlier row of ``doc``, else
    None (not measured)."""
    earlier = previous_rows(doc) if doc is not None and doc.exists() else {}
    rows = []
    for method in ORDER:
        folder = Path(out) / method
        if (folder / "arrays.npz").exists():
            rows.append((method, measured_cells(folder), "this run"))
        elif method in earlier:
            rows.append((method, earlier[method], "earlier run"))
        else:
            rows.append((method, None, "not measured"))
    return rows


def markdown(out: str, doc: Path | None = None) -> str:
    """The docs table: mean [95 % interval] per score; a method measured in an earlier run with the same
    settings (kept from ``doc``) is marked with *, one not measured says so."""
    from convlens.faithfulness.table import higher_is_better

    scores = _scores()
    lines = ["| method | " + " | ".join(f"{s} {'↑' if higher_is_better(s) else '↓'}" for s in scores) + " |",
             "|---" * (len(scores) + 1) + "|"]
    for method, cells, source in table_rows(out, doc):
        if cells is None:
            lines.append(f"| {method} | " + " | ".join(["not measured"] * len(scores)) + " |")
            continue
        text = [f"{mean:.3f} [{low:.3f}, {high:.3f}]" for mean, low, high in cells]
        lines.append(f"| {method}{' *' if source == 'earlier run' else ''} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def ranking(out: str, path: str, doc: Path | None = None, images: int = 7) -> None:
    """The ranking figure of the docs table (every measured row, this run's and the earlier run's)."""
    from types import SimpleNamespace

    from convlens.faithfulness.figures import ranking_figure

    rows = [{"method": m, "scores": dict(zip(_scores(), cells, strict=True))}
            for m, cells, _ in table_rows(out, doc) if cells is not None]
    figure = ranking_figure(SimpleNamespace(scores=_scores(), table=rows, classes=range(images)))
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    if sys.argv[1] == "--table":  # --table OUT [DOC]: the markdown table (rows not in OUT kept from DOC)
        print(markdown(sys.argv[2], Path(sys.argv[3]) if len(sys.argv) > 3 else None))
    elif sys.argv[1] == "--ranking":  # --ranking OUT PNG [DOC]
        ranking(sys.argv[2], sys.argv[3], Path(sys.argv[4]) if len(sys.argv) > 4 else None)
    else:
        main(sys.argv[1], sys.argv[2].split(",") if len(sys.argv) > 2 else None)
