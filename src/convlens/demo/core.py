"""``convlens demo``: every capability on the offline default model and bundled sample photos.

Each section function receives a ``DemoContext`` and returns a ``DemoSection`` (title, a sentence, figure paths
relative to the demo folder). ``index.html`` shows them all; ``convlens.demo.SECTIONS`` lists them.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from convlens.models import DEFAULT_SPEC, ImageClassifier, load_model
from convlens.output import folder_in_place

SAMPLE_PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")


@dataclass
class DemoContext:
    model: ImageClassifier
    photos: list[Path]  # the bundled sample photos, written as PNG inside the demo folder
    out: Path  # the demo folder: sections write their own subfolders
    progress: bool = True


@dataclass
class DemoSection:
    title: str
    text: str
    figures: list[str] = field(default_factory=list)  # paths relative to the demo folder


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


def predictions_section(context: DemoContext) -> DemoSection:
    from convlens.predict import predict
    from convlens.render import image_grid

    results = predict(context.model, context.photos, top=3)
    tiles = [context.model.preprocessing.to_display(context.model.prepare(p)[0]) for p in context.photos]
    titles = ["\n".join(str(p) for p in preds) for preds in results]
    figure = image_grid(tiles, titles, ncols=len(tiles), tile_inches=2.6,
                        suptitle=f"{context.model.spec}: top-3 predictions")
    target = context.out / "predictions.png"
    figure.savefig(target, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return DemoSection("Predictions", "The default model's top-3 classes for each sample photo, as it sees it "
                       "(resized and centre-cropped).", [target.name])


def run_demo(out: str | Path = "convlens-demo", model_spec: str = DEFAULT_SPEC, progress: bool = True, *,
             sections: list[Callable[[DemoContext], DemoSection]],
             log: Callable[[str], None] = print, force: bool = False) -> Path:
    """Build the demo folder in place (its training run records absolute paths) under the output-folder rules
    of ``convlens.output``: an earlier demo is replaced, a folder of other files only with ``force``."""
    with folder_in_place(out, "demo", force=force) as folder:
        model = load_model(model_spec)
        context = DemoContext(model, sample_photos(folder / "photos"), folder, progress)
        done = []
        for section in sections:
            start = time.perf_counter()
            done.append(section(context))
            log(f"  {done[-1].title}: {time.perf_counter() - start:.1f} s")
        index = folder / "index.html"
        index.write_text(render_index(model, done))
    return Path(out) / "index.html"


def render_index(model: ImageClassifier, sections: list[DemoSection]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>convlens demo</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "img{max-width:100%;border:1px solid #ddd;margin:.5em 0}h2{border-bottom:1px solid #ccc}</style>",
        "</head><body>",
        f"<h1>convlens demo</h1><p>Model: <code>{html.escape(model.spec)}</code>, "
        f"input {model.input_size[0]}x{model.input_size[1]}, {len(model.class_names)} classes.</p>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2><p>{html.escape(section.text)}</p>")
        parts += [f"<img src='{html.escape(figure)}' alt='{html.escape(figure)}'>" for figure in section.figures]
    parts.append("</body></html>")
    return "\n".join(parts)
