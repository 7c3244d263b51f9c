"""The pointing game (Zhang et al. 2016) with hand-drawn boxes, TorchRay's way of scoring it.

Boxes come as JSON in the format of ``../shared/data/photos/boxes.json``: ``{"images": {FILE NAME: [{"object":
NAME, "classes": [INDICES] or "151-268" (ranges allowed in lists too), "box": [x0, y0, x1, y1]}, ...]}}`` in
pixels of the original file. Each object is one trial: the class explained is the best-scoring class of its
list, the map's maximum (first in row-major order) is taken back to the original file's pixels through the
model's resize and crop, and it is a hit when it lies within ``tolerance`` (15) pixels of the box. Accuracy is
computed per object name, then averaged over names (TorchRay's mean over classes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from convlens.errors import ConvlensError

TOLERANCE = 15


@dataclass(frozen=True)
class Trial:
    """One object on one image: where its box is and which classes count as it."""

    image: int  # index into the images given
    name: str  # the object's name: accuracy is per name
    classes: tuple[int, ...]
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the original file
    scale: tuple[float, float]  # model-input pixels per original pixel (x, y)
    offset: tuple[float, float]  # crop offset in resized pixels (x, y)

    def to_original(self, row: int, col: int) -> tuple[float, float]:
        """The centre of input pixel (row, col) in the original file's pixels (x, y)."""
        return (col + 0.5 + self.offset[0]) / self.scale[0], (row + 0.5 + self.offset[1]) / self.scale[1]

    def distance(self, x: float, y: float) -> float:
        x0, y0, x1, y1 = self.box
        return float(np.hypot(max(x0 - x, 0.0, x - x1), max(y0 - y, 0.0, y - y1)))


def parse_classes(value, where: str) -> tuple[int, ...]:
    """``[1, 2, "5-7"]``, ``"151-268"`` or an int to the class indices they name."""
    items = value if isinstance(value, list) else [value]
    classes: list[int] = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            classes.append(item)
        elif isinstance(item, str) and item.replace("-", "", 1).isdigit():
            low, _, high = item.partition("-")
            classes += list(range(int(low), int(high or low) + 1))
        else:
            raise ConvlensError(f"{where}: classes must be indices or ranges like '151-268', got {item!r}")
    if not classes:
        raise ConvlensError(f"{where}: no classes given")
    return tuple(classes)


def read_boxes(boxes: str | Path | dict) -> dict[str, list[dict]]:
    """The ``images`` mapping of a boxes JSON file (or of the dict given)."""
    if isinstance(boxes, (str, Path)):
        path = Path(boxes)
        if not path.is_file():
            raise ConvlensError(f"boxes file {path} not found")
        try:
            boxes = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConvlensError(f"boxes file {path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(boxes, dict) or not isinstance(boxes.get("images"), dict):
        raise ConvlensError('boxes: expected {"images": {FILE NAME: [{"object", "classes", "box"}, ...]}}')
    return boxes["images"]


def input_geometry(preprocessing, size: tuple[int, int]) -> tuple[tuple[float, float], tuple[float, float]]:
    """(scale x, scale y) and (offset x, offset y) of the model's resize and centre crop for an image of
    ``size`` (width, height), as torchvision computes them."""
    width, height = size
    crop_h, crop_w = preprocessing.crop
    if preprocessing.squash or preprocessing.resize is None:
        return (crop_w / width, crop_h / height), (0.0, 0.0)
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = preprocessing.resize, int(preprocessing.resize * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    top, left = int(round((new_h - crop_h) / 2.0)), int(round((new_w - crop_w) / 2.0))
    return (new_w / width, new_h / height), (float(left), float(top))


def pointing_trials(boxes, image_paths: Sequence[str | Path | None], preprocessing) -> list[Trial]:
    """One trial per object of the images given; boxes naming other images or leaving the image are errors."""
    from PIL import Image

    entries = read_boxes(boxes)
    names = [Path(p).name if p is not None else None for p in image_paths]
    missing = [name for name in entries if name not in names]
    if missing:
        given = ", ".join(n for n in names if n) or "none (images given as tensors)"
        raise ConvlensError(f"boxes name images that are not given: {', '.join(missing)} (given: {given})")
    trials = []
    for index, path in enumerate(image_paths):
        name = names[index]
        if name not in entries:
            continue
        with Image.open(path) as image:
            size = image.size
        scale, offset = input_geometry(preprocessing, size)
        for number, item in enumerate(entries[name]):
            where = f"boxes for {name}, object {number + 1}"
            box = item.get("box") if isinstance(item, dict) else None
            if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
                raise ConvlensError(f"{where}: box must be [x0, y0, x1, y1]")
            x0, y0, x1, y1 = map(float, box)
            if not (0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1]):
                raise ConvlensError(f"{where}: box {box} is outside the {size[0]}x{size[1]} image "
                                    "(need 0 <= x0 < x1 <= width, 0 <= y0 < y1 <= height)")
            classes = parse_classes(item.get("classes"), where)
            trials.append(Trial(index, str(item.get("object", f"object {number + 1}")), classes, (x0, y0, x1, y1),
                                scale, offset))
    return trials


def best_classes(trials: Sequence[Trial], logits: torch.Tensor) -> list[int]:
    """The best-scoring class of each trial's list on its image."""
    chosen = []
    for trial in trials:
        if max(trial.classes) >= logits.shape[1]:
            raise ConvlensError(f"object {trial.name!r}: class {max(trial.classes)} is beyond the model's "
                                f"{logits.shape[1]} classes")
        candidates = torch.tensor(trial.classes)
        chosen.append(int(candidates[logits[trial.image, candidates].argmax()]))
    return chosen


def peaks(maps: torch.Tensor) -> torch.Tensor:
    """``N x 2`` (row, col) of each map's maximum, the first in row-major order."""
    flat = maps.flatten(1)
    index = flat.argmax(dim=1)
    return torch.stack([index // maps.shape[-1], index % maps.shape[-1]], dim=1)


def pointing_hits(trials: Sequence[Trial], maps: torch.Tensor, tolerance: float = TOLERANCE) -> np.ndarray:
    """1 where the peak of a trial's map (``maps[i]`` for ``trials[i]``) is within ``tolerance`` of its box."""
    points = peaks(maps).tolist()
    return np.array([float(trial.distance(*trial.to_original(*point)) <= tolerance)
                     for trial, point in zip(trials, points, strict=True)])


def mean_class_accuracy(hits: np.ndarray, names: Sequence[str]) -> float:
    """Accuracy per object name, averaged over names."""
    labels = np.asarray(names)
    return float(np.mean([hits[labels == name].mean() for name in dict.fromkeys(names)])) if len(hits) else float("nan")
