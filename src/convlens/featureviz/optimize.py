"""``feature_viz``: activation maximisation with Lucid's recipe, many units at once (one per batch element).

The model only runs up to the layer (a hook stops the forward pass there), parameters are frozen for the call
and restored after, so gradients reach the images alone; every unit's images are optimised together in one
batch, which is where the speed over a unit-by-unit loop (Lucent) comes from.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.featureviz.objectives import Objective, diversity_penalty
from convlens.featureviz.param import FourierImage
from convlens.featureviz.result import FeatureVizResult, NaturalReference
from convlens.featureviz.transforms import Robustness
from convlens.hooks import first_tensor, forward_hooks, module_device, preserved_state
from convlens.models.classifier import ImageClassifier, as_module
from convlens.progress import ProgressLike, track

DEFAULT_STEPS = 512
DEFAULT_LR = 0.05
DEFAULT_UNITS = 16


class _Reached(Exception):
    """Raised by the layer's hook: the rest of the model is not needed."""


def feature_viz(model: ImageClassifier | nn.Module, layer: str | None, units: Sequence[int] | None = None, *,
                objective: str = "channel", steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR,
                size: tuple[int, int] | int | None = None, decay_power: float = 1.0,
                robustness: Robustness | None = None, diversity: int = 1, diversity_weight: float = 100.0,
                position: tuple[int, int] | None = None, vectors: torch.Tensor | None = None,
                reference=None, seed: int = 0, batch_size: int = 64,
                progress: ProgressLike = False) -> FeatureVizResult:
    """Optimise one image per unit (``diversity`` images each) to maximise ``objective`` at ``layer``.

    ``layer`` None with ``objective="class"`` explains the model's logits (``units`` are classes).
    ``reference``: natural images (paths, a folder, PIL images or a preprocessed tensor) whose best activation
    each visualization is compared with (top-1 and top-9 mean of the same statistic).
    """
    start = time.perf_counter()
    module = as_module(model)
    _check_options(steps, lr, diversity, batch_size, objective, layer)
    height, width = _image_size(model, size)
    normalize = _normalizer(model)
    device = module_device(module)
    units = _units(module, layer, units, objective, (height, width), normalize, device)
    unit_tensor = torch.tensor([u for u in units for _ in range(diversity)], dtype=torch.long)
    if objective == "direction":
        vectors = _direction_vectors(vectors, len(units), diversity)
    robustness = Robustness() if robustness is None else robustness
    run = _runner(module, layer)
    images, curves = [], []
    chunk = max(diversity, batch_size // diversity * diversity)
    starts = list(range(0, len(unit_tensor), chunk))
    total_steps = steps * len(starts)
    with preserved_state(module) as net:
        for parameter in net.parameters():
            parameter.requires_grad_(False)
        for index, first in enumerate(starts):
            part = slice(first, first + chunk)
            goal = Objective(objective, unit_tensor[part], position, None if vectors is None else vectors[part])
            found, curve = _optimise(run, net, goal, (height, width), normalize, robustness, steps, lr, decay_power,
                                     diversity, diversity_weight, seed, first, device,
                                     _progress(progress, index * steps, total_steps))
            images.append(found)
            curves.append(curve)
        images_all = torch.cat(images)
        reached = _reached(run, net, Objective(objective, unit_tensor, position, vectors), images_all, normalize,
                           chunk)
        natural = None
        if reference is not None:
            natural = _natural(model, net, run, layer, Objective(objective, torch.tensor(list(units)), position,
                                                                 None if vectors is None else vectors[::diversity]),
                               reference, normalize, batch_size)
    return FeatureVizResult(
        model=_describe(model), layer=layer or "logits", units=tuple(units), objective=objective,
        images=images_all.view(len(units), diversity, 3, height, width).cpu(),
        inputs=normalize(images_all.view(len(units), diversity, 3, height, width)[:, 0]).cpu(),
        reached=reached.view(len(units), diversity), curves=torch.cat(curves, dim=1).view(steps, len(units),
                                                                                           diversity),
        natural=natural,
        parameters={"steps": steps, "lr": lr, "size": [height, width], "decay_power": decay_power,
                    "robustness": robustness.__dict__ if robustness else None, "diversity": diversity,
                    "diversity_weight": diversity_weight if diversity > 1 else 0.0,
                    "position": list(position) if position else None, "seed": seed, "batch_size": chunk,
                    "optimizer": "Adam", "parametrization": "fourier (1/f) + decorrelated colour + sigmoid"},
        seconds=time.perf_counter() - start)


def _optimise(run, net, goal: Objective, size, normalize, robustness, steps, lr, decay_power, diversity,
              diversity_weight, seed, offset, device, progress) -> tuple[torch.Tensor, torch.Tensor]:
    count = len(goal.units)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + offset)
    image = FourierImage(count, *size, decay_power=decay_power, generator=generator, device=device)
    optimizer = torch.optim.Adam(image.parameters(), lr=lr)
    curve = torch.empty(steps, count)
    with torch.inference_mode(False), torch.enable_grad():
        for step in track(range(steps), steps, "feature visualization", progress):
            pixels = _crop(robustness(image(), generator), size)
            output = run(net, normalize(pixels))
            values = goal(output)
            loss = -values.sum()
            if diversity > 1:
                loss = loss + diversity_weight * diversity_penalty(output, count // diversity, diversity).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            curve[step] = values.detach().float().cpu()
        return image().detach(), curve


def _reached(run, net, goal: Objective, images: torch.Tensor, normalize, chunk: int) -> torch.Tensor:
    """The objective on the final images as they are (no transformation), one value per image."""
    values = []
    with torch.inference_mode():
        for first in range(0, len(images), chunk):
            part = slice(first, first + chunk)
            piece = Objective(goal.kind, goal.units[part], goal.position,
                              None if goal.vectors is None else goal.vectors[part])
            values.append(piece(run(net, normalize(images[part]))).float().cpu())
    return torch.cat(values)


def _crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centre ``size`` window of the padded, transformed images (the model's input size)."""
    height, width = size
    top = (images.shape[2] - height) // 2
    left = (images.shape[3] - width) // 2
    return images[:, :, top:top + height, left:left + width]


def _runner(module: nn.Module, layer: str | None) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """A function running the model up to ``layer`` (the whole model when None) and returning its output."""
    if layer is None:
        return lambda net, inputs: first_tensor(net(inputs), "model output")

    def run(net: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        store: dict[str, torch.Tensor] = {}

        def hook(mod, args, output):
            store["output"] = first_tensor(output, layer)
            raise _Reached

        with forward_hooks(net, {layer: hook}):
            try:
                net(inputs)
            except _Reached:
                pass
        if "output" not in store:
            raise ConvlensError(f"layer {layer!r} did not run in the forward pass; choose another layer")
        return store["output"]

    return run


def _natural(model, net, run, layer, goal: Objective, reference, normalize, batch_size: int) -> NaturalReference:
    """The statistic of every unit on every reference image; top-1 and top-9 mean per unit."""
    from convlens.data.images import list_images
    from convlens.models.classifier import as_batch

    paths: list[str] = []
    if isinstance(reference, torch.Tensor):
        batches = [reference[i:i + batch_size] for i in range(0, len(reference), batch_size)]
    else:
        items = [reference] if isinstance(reference, (str, Path)) else list(reference)
        files = []
        for item in items:
            files += list_images(item) if isinstance(item, (str, Path)) and Path(item).is_dir() else [item]
        if not files:
            raise ConvlensError("no reference images found")
        paths = [str(f) for f in files]
        batches = (files[i:i + batch_size] for i in range(0, len(files), batch_size))
    values = []
    with torch.inference_mode():
        for batch in batches:
            values.append(goal.statistic(run(net, as_batch(model, batch))).float().cpu())
    table = torch.cat(values)  # M x N
    top = table.topk(min(9, table.shape[0]), dim=0)
    return NaturalReference(top1=top.values[0], top9_mean=top.values.mean(0), best_image=top.indices[0],
                            count=table.shape[0], paths=tuple(paths))


def _units(module, layer, units, objective, size, normalize, device) -> list[int]:
    """The units asked for, checked against the layer's channels (or the model's classes)."""
    probe_run = _runner(module, layer)
    with preserved_state(module) as net, torch.inference_mode():
        output = probe_run(net, normalize(torch.full((1, 3, *size), 0.5, device=device)))
    if objective != "class" and output.ndim != 4:
        raise ConvlensError(f"layer {layer!r} gives {tuple(output.shape)}, not an N x C x H x W feature map; "
                            "choose a conv layer or block (`convlens layers MODEL`)")
    channels = output.shape[1]
    chosen = list(range(min(DEFAULT_UNITS, channels))) if units is None else [int(u) for u in units]
    if not chosen:
        raise ConvlensError("no units given")
    bad = [u for u in chosen if not 0 <= u < channels]
    if bad:
        what = "classes" if objective == "class" else f"channels at {layer!r}"
        raise ConvlensError(f"unit {bad[0]} is out of range: the model has {channels} {what}")
    return chosen


def _direction_vectors(vectors, count: int, diversity: int) -> torch.Tensor:
    if vectors is None:
        raise ConvlensError("the direction objective needs vectors (one per unit, in channel space)")
    vectors = torch.as_tensor(vectors, dtype=torch.float32)
    if vectors.ndim == 1:
        vectors = vectors[None].expand(count, -1)
    if vectors.shape[0] != count:
        raise ConvlensError(f"{vectors.shape[0]} direction vectors for {count} units")
    return vectors.repeat_interleave(diversity, dim=0)


def _check_options(steps, lr, diversity, batch_size, objective, layer) -> None:
    if steps < 1:
        raise ConvlensError(f"steps must be at least 1, got {steps}")
    if not lr > 0:
        raise ConvlensError(f"lr must be positive, got {lr}")
    if diversity < 1:
        raise ConvlensError(f"diversity must be at least 1, got {diversity}")
    if batch_size < 1:
        raise ConvlensError(f"batch_size must be at least 1, got {batch_size}")
    if layer is None and objective != "class":
        raise ConvlensError(f"the {objective} objective needs a layer (--layer)")


def _image_size(model, size) -> tuple[int, int]:
    if size is None:
        return tuple(model.input_size) if isinstance(model, ImageClassifier) else (224, 224)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height < 8 or width < 8:
        raise ConvlensError(f"image size must be at least 8x8, got {height}x{width}")
    return int(height), int(width)


def _normalizer(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """[0, 1] pixels to model input: the model's own preprocessing (a bare module takes [0, 1] pixels)."""
    if isinstance(model, ImageClassifier):
        return model.preprocessing.normalize
    return lambda pixels: pixels


def _describe(model) -> dict:
    return model.describe() if isinstance(model, ImageClassifier) else {"spec": "custom", "architecture":
                                                                        type(model).__name__}


def _progress(progress: ProgressLike, done_before: int, total: int) -> ProgressLike:
    """Progress over all chunks: a callback sees one count from 0 to ``total``."""
    if not callable(progress) or isinstance(progress, bool):
        return progress
    return lambda description, done, _: progress(description, done_before + done, total)
