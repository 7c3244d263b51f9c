"""What ``convlens.cam`` returns: one method's ``CAMResult``, or a ``CAMComparison`` of several side by side.

Both are ``convlens.result.Result``s: ``arrays()`` (numpy, with ``input``), ``summary()``, ``figures()`` and the
shared ``save(out)``. The three views are computed the same way for one method or several (the functions at the
end of this module take a sequence of results); with several, every ``cam*`` array gets a ``.METHOD`` suffix.

Figures: images that came from a folder are drawn together in ``grid`` (true and predicted labels, green when
right, red when wrong; at most ``GRID_MAX``); every other image gets ``cam-STEM`` (the input, then each method's
overlay). Images given as tensors or PIL images have no file name: up to ``SEPARATE_MAX`` of them get
``cam-INDEX`` each, more go to the grid.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from convlens.errors import ConvlensError
from convlens.result import Result

GRID_MAX = 64  # tiles in the grid figure; the arrays hold every image
SEPARATE_MAX = 8  # unnamed images drawn one figure each; more go to the grid


@dataclass(frozen=True)
class ImageInfo:
    """What the figures and ``summary.json`` know beyond the numbers: the model and where the images came from.

    Tuples are per image; empty when unknown (a bare module, tensors given).
    """

    class_names: tuple[str, ...] | None = None
    preprocessing: Any = None  # models.Preprocessing, for drawing the input
    model: dict = field(default_factory=dict)  # ImageClassifier.describe(), or the module's class
    paths: tuple[str | None, ...] = ()
    labels: tuple[int | None, ...] = ()  # true class, from a class subfolder named like a model class
    in_grid: tuple[bool, ...] = ()  # drawn in the grid figure (images from folders)
    target_spec: str = "predicted"
    parameters: dict = field(default_factory=dict)

    def class_name(self, index: int | None) -> str | None:
        if index is None:
            return None
        names = self.class_names or ()
        return names[index] if 0 <= index < len(names) else str(index)


@dataclass(frozen=True)
class CAMResult(Result):
    """One CAM method's maps for a batch of images (tensors on the CPU, float32).

    ``raw``: one ``N x h x w`` map per layer at the layer's resolution, after the method's ReLU and before any
    normalisation or resizing. ``maps``: ``N x H x W`` at the input's resolution, scaled to [0, 1] per image
    (with several layers: each layer's map scaled and upsampled, averaged, scaled again). ``input``: the
    preprocessed model input that was explained.
    """

    command: ClassVar[str] = "cam"

    method: str
    layers: tuple[str, ...]
    raw: tuple[torch.Tensor, ...]
    maps: torch.Tensor
    targets: tuple[int | None, ...]  # class index per image; None where the target is a callable
    predicted: tuple[int | None, ...]  # top class per image; None when the model output is not one tensor
    scores: torch.Tensor  # each image's target score on the unmodified input
    logits: torch.Tensor | None = None  # N x classes, when the model output is one tensor
    input: torch.Tensor | None = None  # N x 3 x H x W, the preprocessed input
    title: str = ""  # the method's name in figures (``Grad-CAM``)
    info: ImageInfo = field(default_factory=ImageInfo)
    compute_seconds: float = 0.0
    notes: tuple[str, ...] = ()  # what the method had to say (e.g. images whose map is undefined)

    @property
    def cam_raw(self) -> torch.Tensor:
        """The raw map of the only layer (``raw[0]``); with several layers use ``raw``."""
        if len(self.raw) != 1:
            raise ConvlensError(f"{len(self.raw)} layers were explained; use .raw (one map per layer)")
        return self.raw[0]

    def arrays(self) -> dict[str, np.ndarray]:
        """``input``, ``cam``, ``cam_raw`` (``cam_raw.LAYER`` per layer when there are several), ``target`` and
        ``predicted`` (-1 where unknown), ``score``, ``probability`` (of the predicted class) and ``label``
        (true class, -1 where unknown; only when some image has one)."""
        return cam_arrays([self])

    def summary(self) -> dict[str, Any]:
        return cam_summary([self])

    def figures(self) -> dict:
        return dict(self.iter_figures())

    def iter_figures(self) -> Iterator[tuple[str, Any]]:
        return iter_cam_figures([self])


@dataclass(frozen=True)
class CAMComparison(Result):
    """Several methods on the same images (``convlens.cam(..., method=[...])``): ``results`` in the order
    asked, ``comparison["scorecam"]`` for one of them; figures show them side by side."""

    command: ClassVar[str] = "cam"

    results: tuple[CAMResult, ...]

    def __getitem__(self, method: str) -> CAMResult:
        for result in self.results:
            if result.method == method:
                return result
        raise KeyError(f"{method!r} is not among {[r.method for r in self.results]}")

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(result.method for result in self.results)

    @property
    def input(self) -> torch.Tensor | None:
        return self.results[0].input

    def arrays(self) -> dict[str, np.ndarray]:
        """As ``CAMResult.arrays()``, each ``cam*`` name with a ``.METHOD`` suffix when there are several."""
        return cam_arrays(self.results)

    def summary(self) -> dict[str, Any]:
        return cam_summary(self.results)

    def figures(self) -> dict:
        return dict(self.iter_figures())

    def iter_figures(self) -> Iterator[tuple[str, Any]]:
        return iter_cam_figures(self.results)


# --- the three views, for one result or several on the same images ------------------------------------------
def _labels(results: Sequence[CAMResult]) -> list[int | None]:
    labels = results[0].info.labels
    return list(labels) if labels else [None] * len(results[0].maps)


def _probabilities(result: CAMResult) -> torch.Tensor | None:
    return result.logits.softmax(1) if result.logits is not None else None


def cam_arrays(results: Sequence[CAMResult]) -> dict[str, np.ndarray]:
    first = results[0]
    if first.input is None:
        raise ConvlensError("this CAMResult has no input (made by hand?); arrays() needs it")
    arrays: dict[str, np.ndarray] = {"input": first.input.detach().cpu().float().numpy()}
    for result in results:
        suffix = f".{result.method}" if len(results) > 1 else ""
        arrays["cam" + suffix] = result.maps.numpy()
        if len(result.layers) == 1:
            arrays["cam_raw" + suffix] = result.raw[0].numpy()
        else:
            for layer, raw in zip(result.layers, result.raw, strict=True):
                arrays[f"cam_raw.{layer}{suffix}"] = raw.numpy()
    arrays["target"] = np.array([-1 if t is None else t for t in first.targets], dtype=np.int64)
    arrays["predicted"] = np.array([-1 if p is None else p for p in first.predicted], dtype=np.int64)
    arrays["score"] = first.scores.numpy()
    probabilities = _probabilities(first)
    if probabilities is not None:
        arrays["probability"] = probabilities.max(1).values.numpy()
    labels = _labels(results)
    if any(label is not None for label in labels):
        arrays["label"] = np.array([-1 if label is None else label for label in labels], dtype=np.int64)
    return arrays


def cam_summary(results: Sequence[CAMResult]) -> dict[str, Any]:
    first = results[0]
    info = first.info
    probabilities = _probabilities(first)
    paths = list(info.paths) if info.paths else [None] * len(first.maps)
    images = []
    for index, (path, label) in enumerate(zip(paths, _labels(results), strict=True)):
        predicted, target = first.predicted[index], first.targets[index]
        images.append({
            "path": path,
            "label": None if label is None else {"index": label, "name": info.class_name(label)},
            "predicted": None if predicted is None else {
                "index": predicted, "name": info.class_name(predicted),
                "probability": float(probabilities[index, predicted]) if probabilities is not None else None},
            "target": None if target is None else {"index": target, "name": info.class_name(target)},
        })
    summary = {
        "inputs": paths if info.paths else None,
        "model": info.model,
        "methods": [{"method": r.method, "layers": list(r.layers)} for r in results],
        "layer": sorted({layer for r in results for layer in r.layers}),
        "targets": {"spec": info.target_spec, "per_image": [image["target"] for image in images]},
        "images": images,
        "parameters": info.parameters,
        "compute_seconds": sum(r.compute_seconds for r in results),
    }
    notes = [note for r in results for note in r.notes]
    if notes:
        summary["notes"] = notes
    return summary


def _method_titles(results: Sequence[CAMResult]) -> list[str]:
    same_layers = len({result.layers for result in results}) == 1
    return [(r.title or r.method) + ("" if same_layers else f"\n{'+'.join(r.layers)}") for r in results]


def _display(info: ImageInfo, image: torch.Tensor) -> np.ndarray:
    if info.preprocessing is not None:
        return info.preprocessing.to_display(image)
    from convlens.render import min_max

    return min_max(image.detach().cpu().float().permute(1, 2, 0).numpy())


def cam_tiles(results: Sequence[CAMResult], indices: Sequence[int], always_target: bool = False,
              first_line: bool = False) -> list:
    """The figure tiles of images ``indices`` (each method's map, titled with the labels; ``first_line``: the
    true or predicted label only)."""
    from convlens.cam.figures import Tile, tile_title

    first, info = results[0], results[0].info
    probabilities = _probabilities(first)
    labels = _labels(results)
    tiles = []
    for index in indices:
        predicted, target, label = first.predicted[index], first.targets[index], labels[index]
        title = tile_title(info.class_name(predicted),
                           float(probabilities[index, predicted]) if probabilities is not None else None,
                           info.class_name(target), info.class_name(label), always_target)
        correct = None if label is None or predicted is None else label == predicted
        title = title.split("\n")[0] if first_line else title
        tiles.append(Tile(_display(info, first.input[index]), [r.maps[index].numpy() for r in results], title,
                          correct))
    return tiles


def _grid_indices(info: ImageInfo, count: int) -> list[int]:
    if info.in_grid:
        return [index for index, flag in enumerate(info.in_grid) if flag]
    return list(range(count)) if not info.paths and count > SEPARATE_MAX else []


def iter_cam_figures(results: Sequence[CAMResult]) -> Iterator[tuple[str, Any]]:
    """``grid`` for the images from folders, ``cam-STEM`` for each other image; drawn one at a time."""
    from convlens.cam.figures import grid_figure, image_figure

    first, info = results[0], results[0].info
    if first.input is None:
        raise ConvlensError("this CAMResult has no input (made by hand?); figures() needs it")
    titles = _method_titles(results)
    layers = {"+".join(r.layers) for r in results}
    context = f"{info.model.get('spec', 'model')}, layer {', '.join(sorted(layers))}"
    count = len(first.maps)
    in_grid = _grid_indices(info, count)
    if in_grid:
        shown = in_grid[:GRID_MAX]
        heading = f"{' vs '.join(t.split(chr(10))[0] for t in titles)}: {context}"
        if len(shown) < len(in_grid):
            heading += f" (first {len(shown)} of {len(in_grid)} images)"
        yield "grid", grid_figure(cam_tiles(results, shown), titles, heading)
    names: set[str] = set()
    grid = set(in_grid)
    for index in (i for i in range(count) if i not in grid):
        path = info.paths[index] if info.paths else None
        stem = Path(path).stem if path else str(index)
        name = f"cam-{stem}" if stem not in names else f"cam-{index}-{stem}"
        names.add(stem)
        tile = cam_tiles(results, [index], always_target=True)[0]
        yield name, image_figure(tile, titles, f"{Path(path).name if path else f'image {index}'}: {context}")
