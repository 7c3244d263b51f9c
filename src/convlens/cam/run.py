"""``convlens.cam(model, images, method=...)``: the CAM family's one function, on files, folders or tensors.

Folders are expanded here (an image's first subfolder is its true class when the model has a class of that
name; ``limit`` takes an even sample across the subfolders); everything else goes through ``as_batch``. The
result draws, summarises and saves itself (``convlens.cam.result``); the CLI only parses and calls this.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from convlens.cam.base import CAMResult
from convlens.cam.methods import cam_method
from convlens.cam.result import CAMComparison
from convlens.data.images import list_images
from convlens.errors import ConvlensError
from convlens.models.classifier import ImageClassifier, ImagesLike, as_batch
from convlens.progress import ProgressLike
from convlens.targets import TargetSpec


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
    return torch.cat([as_batch(model, list(paths[start:start + batch_size]))
                      for start in range(0, len(paths), batch_size)])


def _is_paths(images) -> bool:
    if isinstance(images, (str, Path)):
        return True
    return isinstance(images, (list, tuple)) and bool(images) and all(isinstance(i, (str, Path)) for i in images)


def cam(model: ImageClassifier | nn.Module, images: ImagesLike, *, method: str | Sequence[str] = "gradcam",
        layer: str | Sequence[str] | None = None, target: TargetSpec | Sequence[TargetSpec] = "predicted",
        batch_size: int = 16, limit: int = 0, progress: ProgressLike = False) -> CAMResult | CAMComparison:
    """Class activation maps of ``images`` for ``target`` (docs/cam.md).

    ``method``: a name from ``convlens.cam.METHODS`` (``gradcam``, ``scorecam``, ...) gives a ``CAMResult``; a
    list of names gives a ``CAMComparison`` (the same images, targets and layers; figures side by side).
    ``layer``: a module path, a list (the maps are fused), or None for the last conv layer with spatial extent
    (CAM finds the layer global average pooling reads). ``images``: paths (files or folders: a folder's class
    subfolders named like the model's classes give true labels; ``limit`` caps each folder, 0 for all), PIL
    images, or a preprocessed tensor. ``target``: a class index or name, ``"predicted"``, or a callable on the
    model output, for all images or one per image. ``batch_size``: images per pass (Score-CAM, Ablation-CAM:
    masked or ablated copies per pass).
    """
    names = [method] if isinstance(method, str) else list(method)
    classes = [cam_method(name) for name in names]
    if not classes:
        raise ConvlensError("no CAM method given; choose from convlens.cam.METHODS")
    if len({c.name for c in classes}) != len(classes):
        raise ConvlensError(f"a method is listed twice in {names}")
    if batch_size < 1:
        raise ConvlensError(f"batch_size must be at least 1, got {batch_size}")
    extractors = [c(model, layer, batch_size=batch_size, progress=progress) for c in classes]
    found = None
    if _is_paths(images):
        if not isinstance(model, ImageClassifier):
            raise ConvlensError("paths need an ImageClassifier (convlens.load_model); with a bare nn.Module pass a "
                                "preprocessed N x 3 x H x W tensor")
        found = collect_images([images] if isinstance(images, (str, Path)) else images, model.class_names, limit)
        inputs = prepare_batches(model, found.paths, batch_size)
    else:
        inputs = as_batch(model, images)
    results = [extractor(inputs, target) for extractor in extractors]
    info = dataclasses.replace(results[0].info, parameters={"batch_size": batch_size, "limit": limit})
    if found is not None:
        info = dataclasses.replace(
            info, paths=tuple(str(p) for p in found.paths), labels=tuple(found.labels),
            in_grid=tuple(found.from_folder),
            parameters={**info.parameters, "images_found": found.found, "images_used": len(found.paths)})
    results = [dataclasses.replace(result, info=info) for result in results]
    return results[0] if isinstance(method, str) else CAMComparison(tuple(results))
