"""``convlens cam``: CAMs of images or of a labelled folder, written to an output folder.

``arrays.npz``: ``input``; ``cam`` (``N x H x W``, 0..1) and ``cam_raw`` (``N x h x w``, the method's map at the
layer's resolution after its ReLU, before any scaling; ``cam_raw.LAYER`` per layer when several layers are
fused) -- with several methods every name gets a ``.METHOD`` suffix (``cam.gradcam``, ``cam_raw.scorecam``);
``predicted``, ``probability`` (of the predicted class), ``target`` (class index, -1 for none) and, for
labelled folders, ``label`` (true class, -1 where unknown).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from convlens.cam.base import CAMResult
from convlens.cam.figures import Tile, grid_figure, image_figure, tile_title
from convlens.cam.methods import cam_method
from convlens.data.images import list_images
from convlens.errors import ConvlensError
from convlens.models.classifier import ImageClassifier
from convlens.output import output_dir

GRID_MAX = 64  # tiles in the grid figure; the arrays hold every image


@dataclass(frozen=True)
class ImageSet:
    paths: list[Path]
    labels: list[int | None]  # true class from a class subfolder, where one matches the model's classes
    from_folder: list[bool]  # whether each image came from a folder argument (drawn in the grid)
    found: int  # images found before the limit


def collect_images(arguments: Sequence[str | Path], class_names: Sequence[str], limit: int = 0) -> ImageSet:
    """Image files as given; folders expanded, an image's first subfolder read as its class when the model
    has a class of that name. ``limit`` (0: none) caps each folder to an even sample across its subfolders."""
    paths: list[Path] = []
    labels: list[int | None] = []
    from_folder: list[bool] = []
    found = 0
    for argument in map(Path, arguments):
        if not argument.is_dir():
            paths += list_images(argument)
            labels.append(None)
            from_folder.append(False)
            found += 1
            continue
        files = list_images(argument)
        if not files:
            raise ConvlensError(f"no images found in {argument}")
        found += len(files)
        picked = _even_sample(argument, files, limit)
        paths += picked
        labels += [_label(argument, path, class_names) for path in picked]
        from_folder += [True] * len(picked)
    return ImageSet(paths, labels, from_folder, found)


def _subfolder(root: Path, path: Path) -> str | None:
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else None


def _label(root: Path, path: Path, class_names: Sequence[str]) -> int | None:
    name = _subfolder(root, path)
    if name is None:
        return None
    if name in class_names:
        return list(class_names).index(name)
    lowered = [c.lower() for c in class_names]
    return lowered.index(name.lower()) if name.lower() in lowered else None


def _even_sample(root: Path, files: list[Path], limit: int) -> list[Path]:
    """The first files of each subfolder in turn (round robin), up to ``limit``; all when ``limit`` is 0."""
    if limit <= 0 or len(files) <= limit:
        return files
    groups: dict[str | None, list[Path]] = {}
    for path in files:
        groups.setdefault(_subfolder(root, path), []).append(path)
    queues = [list(reversed(group)) for _, group in sorted(groups.items(), key=lambda item: str(item[0]))]
    picked: list[Path] = []
    while len(picked) < limit:
        for queue in queues:
            if queue and len(picked) < limit:
                picked.append(queue.pop())
    return sorted(picked, key=files.index)


def prepare_batches(model: ImageClassifier, paths: Sequence[Path], batch_size: int) -> torch.Tensor:
    """Decode and preprocess ``batch_size`` images at a time (bounded decoding memory)."""
    return torch.cat([model.prepare(list(paths[start:start + batch_size]))
                      for start in range(0, len(paths), batch_size)])


def run_cam(model: ImageClassifier, images: Sequence[str | Path], out: str | Path,
            methods: Sequence[str] = ("gradcam",), layers: Sequence[str] | None = None,
            target: str | int | None = None, batch_size: int = 16, limit: int = 24,
            progress: bool = False) -> Path:
    """Explain ``images`` (files or folders) with each method; write figures, arrays and summary to ``out``."""
    classes = [cam_method(name) for name in methods] or [cam_method("gradcam")]
    if len({c.name for c in classes}) != len(classes):
        raise ConvlensError(f"a method is listed twice in {list(methods)}")
    found = collect_images(images, model.class_names, limit)
    extractors = [c(model, list(layers) if layers else None, batch_size=batch_size, progress=progress)
                  for c in classes]
    inputs = prepare_batches(model, found.paths, batch_size)
    spec = "predicted" if target is None else target
    with output_dir(out, "cam") as folder:
        with folder.timed():
            results = [extractor(inputs, spec) for extractor in extractors]
        folder.add_arrays(input=inputs, **result_arrays(results, found.labels))
        _draw(folder, model, inputs, results, found)
        folder.update(**_summary(model, results, found, spec, batch_size, limit))
    return Path(out)


def result_arrays(results: Sequence[CAMResult], labels: Sequence[int | None]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for result in results:
        suffix = f".{result.method}" if len(results) > 1 else ""
        for name, value in result.arrays().items():
            if name.startswith("cam"):
                arrays[name + suffix] = value
    first = results[0].arrays()
    arrays["predicted"] = first["predicted"]
    arrays["target"] = first["target"]
    if results[0].logits is not None:
        probabilities = results[0].logits.softmax(1)
        arrays["probability"] = probabilities.gather(1, probabilities.argmax(1, keepdim=True))[:, 0].numpy()
    if any(label is not None for label in labels):
        arrays["label"] = np.array([-1 if label is None else label for label in labels], dtype=np.int64)
    return arrays


def _tiles(model: ImageClassifier, inputs: torch.Tensor, results: Sequence[CAMResult],
           labels: Sequence[int | None], indices: Sequence[int], always_target: bool = False) -> list[Tile]:
    first = results[0]
    probabilities = first.logits.softmax(1) if first.logits is not None else None
    tiles = []
    for index in indices:
        predicted, target, label = first.predicted[index], first.targets[index], labels[index]
        title = tile_title(
            model.class_name(predicted) if predicted is not None else None,
            float(probabilities[index, predicted]) if probabilities is not None else None,
            model.class_name(target) if target is not None else None,
            model.class_name(label) if label is not None else None, always_target)
        correct = None if label is None or predicted is None else label == predicted
        tiles.append(Tile(model.preprocessing.to_display(inputs[index]),
                          [result.maps[index].numpy() for result in results], title, correct))
    return tiles


def _method_titles(results: Sequence[CAMResult]) -> list[str]:
    from convlens.cam.methods import METHODS

    same_layers = len({result.layers for result in results}) == 1
    return [METHODS[r.method].title + ("" if same_layers else f"\n{'+'.join(r.layers)}") for r in results]


def _draw(folder, model: ImageClassifier, inputs: torch.Tensor, results: Sequence[CAMResult],
          found: ImageSet) -> None:
    titles = _method_titles(results)
    layers = {"+".join(r.layers) for r in results}
    context = f"{model.spec}, layer {', '.join(sorted(layers))}"
    in_grid = [i for i, flag in enumerate(found.from_folder) if flag]
    if in_grid:
        shown = in_grid[:GRID_MAX]
        methods = " vs ".join(t.split("\n")[0] for t in titles)
        heading = f"{methods}: {context}"
        if len(shown) < len(in_grid):
            heading += f" (first {len(shown)} of {len(in_grid)} images)"
        folder.save_figure(grid_figure(_tiles(model, inputs, results, found.labels, shown), titles, heading), "grid")
    names: set[str] = set()
    for index in (i for i, flag in enumerate(found.from_folder) if not flag):
        stem = found.paths[index].stem
        name = f"cam-{stem}" if stem not in names else f"cam-{index}-{stem}"
        names.add(stem)
        tile = _tiles(model, inputs, results, found.labels, [index], always_target=True)[0]
        folder.save_figure(image_figure(tile, titles, f"{found.paths[index].name}: {context}"), name)


def _summary(model: ImageClassifier, results: Sequence[CAMResult], found: ImageSet, spec, batch_size: int,
             limit: int) -> dict:
    first = results[0]
    probabilities = first.logits.softmax(1) if first.logits is not None else None
    images = []
    for index, path in enumerate(found.paths):
        predicted, target, label = first.predicted[index], first.targets[index], found.labels[index]
        images.append({
            "path": str(path),
            "label": None if label is None else {"index": label, "name": model.class_name(label)},
            "predicted": None if predicted is None else {
                "index": predicted, "name": model.class_name(predicted),
                "probability": float(probabilities[index, predicted]) if probabilities is not None else None},
            "target": None if target is None else {"index": target, "name": model.class_name(target)},
        })
    return {
        "inputs": [str(path) for path in found.paths],
        "model": model.describe(),
        "methods": [{"method": r.method, "layers": list(r.layers)} for r in results],
        "layer": sorted({layer for r in results for layer in r.layers}),
        "targets": {"spec": str(spec), "per_image": [image["target"] for image in images]},
        "images": images,
        "parameters": {"batch_size": batch_size, "limit": limit, "images_found": found.found,
                       "images_used": len(found.paths)},
    }
