"""``convlens demo`` (``make demo``): the HTML report of the default model on scikit-image's photos, plus the leaf
study's models on leaf images where they are available, behind one landing page.

The demo imports the methods (through the report); no method imports the demo.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from convlens.errors import ConvlensError
from convlens.models import DEFAULT_SPEC

SAMPLE_PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")
LEAF_IMAGES = 24
DEMO_CAM_LAYER = "blocks.6"  # leaf validation images in each leaf report, evenly across the classes
# Where `convlens train` may have left the leaf-study baseline (relative to the demo folder's parent or the working
# directory).
LEAF_RUN_NAMES = ("leaf-baseline", "runs/leaf-baseline")
# Feature visualization of the default model's report: a handful of units of one layer, short enough for a demo
# (256 steps at 128 px take about a minute on two CPU cores for four units of blocks.4)
FEATURE_VIZ_LAYER, FEATURE_VIZ_UNITS, FEATURE_VIZ_STEPS, FEATURE_VIZ_SIZE = "blocks.4", 4, 256, 128


def sample_photos(folder: Path, names: tuple[str, ...] = SAMPLE_PHOTOS) -> list[Path]:
    """scikit-image's bundled photos, saved as PNG files (so every command can take them as paths)."""
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = folder / f"{name}.png"
        if not path.exists():
            Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(path)
        paths.append(path)
    return paths


def shared_data() -> Path | None:
    """The real data beside the repository (``$CONVLENS_SHARED_DATA``, else ``../shared/data``), if there."""
    candidates = [os.environ.get("CONVLENS_SHARED_DATA"), Path.cwd().parent / "shared" / "data",
                  Path(__file__).resolve().parents[4] / "shared" / "data"]
    return next((Path(c) for c in candidates if c and Path(c).is_dir()), None)


def find_leaf_baseline(base: Path) -> Path | None:
    from convlens.models.checkpoint import find_checkpoint

    for root in (base, base.parent, Path.cwd()):
        for name in LEAF_RUN_NAMES:
            if find_checkpoint(root / name) is not None:
                return root / name
    return None


def load_leaf_keras(folder: Path, classes: Path | None = None):
    """The leaf study's Keras model (``keras:ARCHITECTURE.json`` with its ``.h5`` weights, inputs rescaled to
    [0, 1], class names from the leaf folder), where this convlens reads Keras files; ConvlensError otherwise."""
    from convlens.models import load_model

    architectures, weights = sorted(folder.glob("*.json")), sorted(folder.glob("*.h5"))
    if not architectures or not weights:
        raise ConvlensError(f"no Keras model (JSON + .h5) in {folder}")
    try:
        return load_model(f"keras:{architectures[0]}", weights=weights[0], device="cpu", classes=classes,
                          preprocess="unit")
    except TypeError:  # a load_model without Keras support
        raise ConvlensError("this convlens version cannot read Keras models (keras:PATH)") from None


def leaf_images(data: Path, count: int = LEAF_IMAGES) -> list[Path]:
    """``count`` leaf validation images, taken from the class folders in turn (an even sample)."""
    from convlens.data.images import list_images

    folders = sorted(p for p in (data / "leaf" / "validation").iterdir() if p.is_dir())
    queues = [list_images(folder) for folder in folders]
    picked: list[Path] = []
    while len(picked) < count and any(queues):
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(queue.pop(0))
    return picked


@dataclass
class DemoReport:
    title: str
    folder: str  # relative to the demo folder
    text: str
    note: str = ""  # why it is missing, when it is


def demo_feature_viz(model):
    """The demo report's feature visualizations: ``FEATURE_VIZ_UNITS`` units of ``FEATURE_VIZ_LAYER`` (another model:
    its report's middle layer), ``FEATURE_VIZ_STEPS`` steps at up to ``FEATURE_VIZ_SIZE`` px."""
    from convlens.report import FeatureVizOptions
    from convlens.report.compute import default_layers

    layers = default_layers(model)
    layer = FEATURE_VIZ_LAYER if FEATURE_VIZ_LAYER in layers else layers[len(layers) // 2]
    return FeatureVizOptions(layers=(layer,), units=FEATURE_VIZ_UNITS, steps=FEATURE_VIZ_STEPS,
                             size=min(FEATURE_VIZ_SIZE, *model.input_size))


def run_demo(out: str | Path = "convlens-demo", model_spec: str = DEFAULT_SPEC, progress: bool = True,
             log: Callable[[str], None] = print, force: bool = False) -> Path:
    """Write the demo folder and return its ``index.html``.

    The folder follows the output-folder rules of ``convlens.output``: an earlier demo is replaced (set aside
    until the new one is complete, put back if it fails), a folder of other files only with ``force``."""
    from convlens.output import folder_in_place
    from convlens.report.assets import CSS, JS

    with folder_in_place(out, "demo", force=force) as folder:
        reports = build_reports(folder, model_spec, progress, log)
        (folder / "assets").mkdir(exist_ok=True)
        (folder / "assets" / "report.css").write_text(CSS)
        (folder / "assets" / "report.js").write_text(JS)
        (folder / "index.html").write_text(landing_page(reports))
    return Path(out) / "index.html"


def build_reports(out: Path, model_spec: str, progress: bool, log: Callable[[str], None]) -> list[DemoReport]:
    """The reports of the demo, each in its own subfolder of ``out``."""
    from convlens.models import load_model
    from convlens.report import report

    photos = sample_photos(out / "photos")
    reports: list[DemoReport] = []

    def build(title: str, folder: str, model, images, text: str, **options) -> None:
        start = time.perf_counter()
        report(model, images, progress=progress, **options).save(out / folder, progress=progress)
        reports.append(DemoReport(title, folder, text))
        log(f"  {title}: {time.perf_counter() - start:.0f} s")

    model = load_model(model_spec)
    plan = demo_feature_viz(model)
    build(f"{model_spec} on scikit-image's photos", "photos-report", model, photos,
          f"The default model (real ImageNet weights, no download) on {len(photos)} photos: every CAM method, "
          "projections, occlusion and invariance per photo, a page for each stage's last layer and for its "
          "strongest units, and a feature visualization for the "
          f"{plan.units} strongest units of {plan.layers[0]} (on their unit pages). The CAMs read EfficientNet's "
          "last block (320 channels), where Score-CAM and Ablation-CAM stay quick.", units=8,
          cam_layer=DEMO_CAM_LAYER if DEMO_CAM_LAYER in dict(model.module.named_modules()) else None,
          feature_viz=plan)
    data = shared_data()
    run = find_leaf_baseline(out)
    if run is not None and data is not None:
        leaf_model = load_model(run)
        build("the leaf baseline", "leaf-baseline", leaf_model, leaf_images(data),
              f"The leaf study's baseline CNN trained by `convlens train` ({run}) on {LEAF_IMAGES} leaf validation "
              "images.", units=16)
    else:
        reports.append(DemoReport("the leaf baseline", "", "", "no trained leaf-baseline run or leaf data found "
                                  "(`convlens train ../shared/data/leaf --out leaf-baseline`)"))
    if data is not None and (data / "leaf-keras").is_dir():
        try:
            keras_model = load_leaf_keras(data / "leaf-keras", data / "leaf" / "validation")
            build("the leaf study's Keras model", "leaf-keras", keras_model,
                  leaf_images(data),
                  f"The published Keras baseline (32 px) on {LEAF_IMAGES} leaf validation images (which leak "
                  "from its training set: read its predictions accordingly).", units=16)
        except ConvlensError as exc:
            reports.append(DemoReport("the leaf study's Keras model", "", "", str(exc)))
    else:
        reports.append(DemoReport("the leaf study's Keras model", "", "", "../shared/data/leaf-keras not found"))
    return reports


def landing_page(reports: list[DemoReport]) -> str:
    from convlens.report.assets import page
    from convlens.report.pages import inline_code

    items = []
    for item in reports:
        if item.folder:
            items.append(f"<li><a href='{html.escape(item.folder)}/index.html'>{html.escape(item.title)}</a>: "
                         f"{inline_code(item.text)}</li>")
        else:
            items.append(f"<li>{html.escape(item.title)}: not in this demo ({inline_code(item.note)})</li>")
    body = ("<h1>convlens demo</h1><p class='lead'>Reports made by <code>convlens report MODEL IMAGES --out DIR"
            "</code>: a model card, a page per image, per layer and per unit. They work offline; send the folder "
            f"to anyone.</p><ul>{''.join(items)}</ul>")
    return page("convlens demo", "", body)
