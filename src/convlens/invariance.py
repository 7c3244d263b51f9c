"""Invariance of features and output to translation, scale and rotation (Zeiler & Fergus 2014, Fig. 5).

Each transformation is swept over a range of amounts and applied to the image after the resize and before the
centre crop of the model's preprocessing, so amounts are in the pixels the model sees (vertical translation in px,
scale as a zoom factor about the centre, rotation in degrees anticlockwise). Uncovered pixels show the dataset
mean (zero after normalisation). For every image and amount: the Euclidean distance between the flattened
features of the transformed and the original image at an early and a late layer, and the probability of the
true class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from convlens.data.images import load_image
from convlens.errors import ConvlensError
from convlens.hooks import preserved_state, resolve_layer
from convlens.models.classifier import ImageClassifier
from convlens.models.preprocessing import Preprocessing, check_resized_size
from convlens.targets import ClassTarget, resolve_targets

TRANSFORMS = ("translate", "scale", "rotate")
# (first, last, step) as in the paper: vertical translation -60..60 px, scale 1.0..1.8, rotation 0..360 degrees.
DEFAULT_RANGES = {"translate": (-60.0, 60.0, 10.0), "scale": (1.0, 1.8, 0.1), "rotate": (0.0, 360.0, 10.0)}
UNITS = {"translate": "vertical translation (px)", "scale": "scale factor", "rotate": "rotation (degrees)"}
IDENTITY = {"translate": 0.0, "scale": 1.0, "rotate": 0.0}
INPUT_SUFFIX = ":input"


def default_amounts(transform: str, points: int | None = None) -> np.ndarray:
    """The paper's sweep for ``transform``, or ``points`` evenly spaced amounts over the same range."""
    first, last, step = DEFAULT_RANGES[_check_transform(transform)]
    if points is None:
        return np.round(np.arange(first, last + step / 2, step), 6)
    if points < 2:
        raise ConvlensError(f"--points {points}: give at least 2 amounts per transformation")
    return np.round(np.linspace(first, last, points), 6)


def _check_transform(name: str) -> str:
    if name not in TRANSFORMS:
        raise ConvlensError(f"unknown transformation {name!r}; use one of {', '.join(TRANSFORMS)}")
    return name


@dataclass
class InvarianceCurves:
    """One transformation's sweep: ``images x amounts`` arrays."""

    transform: str
    amounts: np.ndarray
    early_distance: torch.Tensor
    late_distance: torch.Tensor
    probability: torch.Tensor
    examples: list[tuple[float, np.ndarray]]  # a few transformed versions of the first image (H x W x 3 in [0, 1])


@dataclass
class InvarianceResult:
    curves: dict[str, InvarianceCurves]
    layers: tuple[str, str]  # early, late (``NAME:input`` means the input of module NAME)
    targets: list[int]
    images: list[str]
    inputs: torch.Tensor  # images x 3 x H x W: the untransformed preprocessed inputs
    clean_probability: torch.Tensor  # images: probability of the target on the untransformed image

    def __getitem__(self, transform: str) -> InvarianceCurves:
        return self.curves[transform]


def transformed_pixels(preprocessing: Preprocessing, image: Image.Image, transform: str,
                       amount: float) -> torch.Tensor:
    """``image`` resized as the model's preprocessing does, transformed, centre-cropped: ``3 x H x W`` in [0, 1].

    At the identity amount this is exactly the preprocessing's own geometry.
    """
    return _transform_and_crop(preprocessing, resized_pixels(preprocessing, image), transform, amount)


def resized_pixels(preprocessing: Preprocessing, image: Image.Image) -> torch.Tensor:
    """The preprocessing's resize alone (before its crop), as a ``3 x h x w`` tensor in [0, 1]."""
    mode = InterpolationMode(preprocessing.interpolation)
    size = list(preprocessing.crop) if _squash(preprocessing) else preprocessing.resize
    if not _squash(preprocessing):
        check_resized_size(image, preprocessing.resize)  # a very thin image would blow up here
    return TF.pil_to_tensor(TF.resize(image, size, interpolation=mode, antialias=True)).float().div_(255.0)


def _squash(preprocessing: Preprocessing) -> bool:
    return preprocessing.squash or preprocessing.resize is None


def _transform_and_crop(preprocessing: Preprocessing, pixels: torch.Tensor, transform: str,
                        amount: float) -> torch.Tensor:
    _check_transform(transform)
    if float(amount) != IDENTITY[transform]:
        pixels = _apply(pixels, transform, float(amount), list(preprocessing.mean))
    return pixels if _squash(preprocessing) else TF.center_crop(pixels, list(preprocessing.crop))


def _apply(pixels: torch.Tensor, transform: str, amount: float, fill: list[float]) -> torch.Tensor:
    if transform == "translate" and amount.is_integer():  # whole pixels: an exact shift, no interpolation
        shift = int(amount)
        out = torch.tensor(fill, dtype=pixels.dtype).view(3, 1, 1).expand_as(pixels).clone()
        height = pixels.shape[1]
        if abs(shift) < height:
            if shift >= 0:
                out[:, shift:] = pixels[:, :height - shift]
            else:
                out[:, :height + shift] = pixels[:, -shift:]
        return out
    bilinear = InterpolationMode.BILINEAR
    if transform == "translate":
        return TF.affine(pixels, angle=0.0, translate=[0, amount], scale=1.0, shear=[0.0, 0.0],
                         interpolation=bilinear, fill=fill)
    if transform == "scale":
        if amount <= 0:
            raise ConvlensError(f"scale amount {amount}: give a positive zoom factor")
        return TF.affine(pixels, angle=0.0, translate=[0, 0], scale=amount, shear=[0.0, 0.0],
                         interpolation=bilinear, fill=fill)
    return TF.rotate(pixels, amount, interpolation=bilinear, fill=fill)


def default_layers(model: ImageClassifier | nn.Module) -> tuple[str, str]:
    """The first conv layer, and the input of the final classifier (the global-pooled features)."""
    from convlens.layers import conv_layers

    module = model.module if isinstance(model, ImageClassifier) else model
    input_size = model.input_size if isinstance(model, ImageClassifier) else None
    convs = conv_layers(module, input_size)
    if not convs:
        raise ConvlensError("the model has no conv layer; pass --layers EARLY LATE")
    linears = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    late = f"{linears[-1]}{INPUT_SUFFIX}" if linears else convs[-1].name
    return convs[0].name, late


def invariance(model: ImageClassifier, images: Sequence[str | Path | Image.Image],
               transforms: Sequence[str] = TRANSFORMS, amounts: Mapping[str, Sequence[float]] | None = None,
               layers: tuple[str, str] | None = None, targets=None,
               points: int | Mapping[str, int] | None = None,
               batch_size: int = 32, examples: int = 3, progress: bool = False) -> InvarianceResult:
    """Feature distances and target probability along each transformation's sweep, for every image.

    ``amounts``: per transformation, the amounts to sweep (default the paper's, or ``points`` evenly spaced over
    its range; ``points`` may be one count per transformation). ``layers``: ``(early, late)`` module names;
    ``NAME:input`` reads the input of module NAME (default: the first conv layer and the input of the final
    classifier). ``targets``: one class (index or name) for all images or one per image; default each image's
    top prediction on the untransformed image.
    """
    if not isinstance(model, ImageClassifier):
        raise ConvlensError("invariance transforms images before preprocessing: load the model with load_model")
    if not images:
        raise ConvlensError("give at least one image")
    if batch_size < 1:
        raise ConvlensError(f"--batch-size {batch_size}: give a positive number")
    transforms = [_check_transform(t) for t in transforms]
    counts = points if isinstance(points, Mapping) else {t: points for t in transforms}
    sweeps = {t: np.asarray(amounts[t] if amounts and t in amounts else default_amounts(t, counts.get(t)),
                            dtype=float) for t in transforms}
    layers = tuple(layers) if layers is not None else default_layers(model)
    if len(layers) != 2:
        raise ConvlensError("--layers takes two names: EARLY LATE")
    for name in layers:
        resolve_layer(model, name.removesuffix(INPUT_SUFFIX))
    names = [str(image) if not isinstance(image, Image.Image) else f"image {i}" for i, image in enumerate(images)]
    pils = [image if isinstance(image, Image.Image) else load_image(image) for image in images]
    preprocessing = model.preprocessing
    resized = [resized_pixels(preprocessing, p) for p in pils]  # once per image: the sweeps start from here
    inputs = torch.stack([preprocessing.normalize(_transform_and_crop(preprocessing, r, "rotate", 0.0))
                          for r in resized])

    jobs = [(t, i) for t in transforms for i in range(len(pils))]
    if progress:
        from convlens.cli.common import track

        jobs = track(jobs, total=len(jobs), description="invariance")
    results = {t: {"early": [], "late": [], "probability": []} for t in transforms}
    with preserved_state(model) as net, torch.inference_mode(), _FeatureHooks(net, layers) as hooks:
        reference_logits, reference = [], {name: [] for name in layers}
        for start in range(0, len(inputs), batch_size):
            reference_logits.append(net(inputs[start:start + batch_size].to(model.device)).float().cpu())
            for name in layers:
                reference[name].append(hooks.current[name].cpu())
        reference_logits = torch.cat(reference_logits)
        reference = {name: torch.cat(chunks) for name, chunks in reference.items()}
        resolved = resolve_targets(model, targets, reference_logits)
        if not all(isinstance(t, ClassTarget) for t in resolved):
            raise ConvlensError("invariance follows the probability of a class: give --target as class indices or "
                                "names")
        target_indices = [t.index for t in resolved]
        clean_probs = torch.softmax(reference_logits, dim=1)[torch.arange(len(pils)), torch.tensor(target_indices)]
        for transform, index in jobs:
            curve = _sweep(net, hooks, preprocessing, resized[index], transform, sweeps[transform], layers,
                           {name: reference[name][index] for name in layers}, target_indices[index],
                           float(clean_probs[index]), batch_size, model.device)
            for key, values in curve.items():
                results[transform][key].append(values)

    curves = {}
    for transform in transforms:
        sweep = sweeps[transform]
        shown = [(float(sweep[i]), _transform_and_crop(preprocessing, resized[0], transform, sweep[i])
                  .permute(1, 2, 0).numpy()) for i in _example_indices(len(sweep), examples)]
        curves[transform] = InvarianceCurves(transform, sweep, *(torch.stack(results[transform][key]) for key in
                                                                 ("early", "late", "probability")), shown)
    return InvarianceResult(curves, (layers[0], layers[1]), target_indices, names, inputs, clean_probs)


def _sweep(net: nn.Module, hooks: _FeatureHooks, preprocessing: Preprocessing, pixels: torch.Tensor, transform: str,
           sweep: np.ndarray, layers: Sequence[str], reference: dict[str, torch.Tensor], target: int,
           clean_probability: float, batch_size: int, device) -> dict[str, torch.Tensor]:
    """Distances at both layers and the target probability for each amount; the transformed images in batches."""
    early, late, probability = [], [], []
    for start in range(0, len(sweep), batch_size):
        batch = torch.stack([preprocessing.normalize(_transform_and_crop(preprocessing, pixels, transform, amount))
                             for amount in sweep[start:start + batch_size]]).to(device)
        logits = net(batch)
        probability.append(torch.softmax(logits.float(), dim=1)[:, target].cpu())
        early.append(_distances(hooks.current[layers[0]], reference[layers[0]]))
        late.append(_distances(hooks.current[layers[1]], reference[layers[1]]))
    # The identity amount is the original image: its numbers are the reference's, exactly.
    identity = torch.as_tensor(sweep == IDENTITY[transform])
    return {"early": torch.where(identity, 0.0, torch.cat(early)),
            "late": torch.where(identity, 0.0, torch.cat(late)),
            "probability": torch.where(identity, clean_probability, torch.cat(probability))}


def _example_indices(count: int, examples: int) -> list[int]:
    """Indices at 1/6, 1/2, 5/6 of the sweep (for 3): spread out, and skipping the ends where rotation repeats."""
    if examples <= 0:
        return []
    return sorted({min(count - 1, int(round((2 * k + 1) / (2 * examples) * (count - 1)))) for k in range(examples)})


def _distances(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of each flattened feature vector to the reference's."""
    return torch.linalg.vector_norm((features.double() - reference.double()).flatten(1), dim=1).float().cpu()


class _FeatureHooks:
    """Forward hooks that keep a copy of each layer's output (or input, for ``NAME:input``) from the last forward
    pass in ``current``; a module called several times per pass keeps its last call. Removed on exit."""

    def __init__(self, net: nn.Module, layers: Sequence[str]) -> None:
        self.net, self.layers = net, list(dict.fromkeys(layers))
        self.current: dict[str, torch.Tensor] = {}
        self.handles: list = []

    def __enter__(self) -> _FeatureHooks:
        try:
            for name in self.layers:
                module = resolve_layer(self.net, name.removesuffix(INPUT_SUFFIX))
                if name.endswith(INPUT_SUFFIX):
                    self.handles.append(module.register_forward_pre_hook(self._keeper(name, lambda a, o: a[0])))
                else:
                    self.handles.append(module.register_forward_hook(self._keeper(name, lambda a, o: o)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _keeper(self, name: str, pick):
        def hook(module, args, output=None):
            tensor = pick(args, output)
            tensor = tensor[0] if isinstance(tensor, (tuple, list)) else tensor
            if not isinstance(tensor, torch.Tensor):
                raise ConvlensError(f"layer {name!r} does not carry a tensor; choose another layer")
            self.current[name] = tensor.detach().clone()  # a copy: later in-place ops cannot change it
        return hook


def invariance_figure(model: ImageClassifier, result: InvarianceResult, title: str | None = None):
    """Zeiler & Fergus Fig. 5: one row per transformation; example images, the distance at the early and the late
    layer, and the probability of the true class against the amount; one curve per image."""
    import matplotlib.pyplot as plt

    transforms = list(result.curves)
    figure, axes = plt.subplots(len(transforms), 4, figsize=(17, 3.4 * len(transforms)), squeeze=False,
                                gridspec_kw={"width_ratios": [1.5, 1, 1, 1]})
    labels = [_image_label(name, model.class_name(t)) for name, t in zip(result.images, result.targets, strict=True)]
    colours = plt.get_cmap("tab10").colors
    for row, transform in enumerate(transforms):
        curves = result.curves[transform]
        _examples_panel(axes[row, 0], curves)
        columns = ((curves.early_distance, f"distance at {result.layers[0]}"),
                   (curves.late_distance, f"distance at {result.layers[1]}"),
                   (curves.probability, "p(true class)"))
        for column, (values, name) in enumerate(columns, start=1):
            axis = axes[row, column]
            for index in range(values.shape[0]):
                axis.plot(curves.amounts, values[index].numpy(), marker="o", markersize=2.5, linewidth=1.2,
                          color=colours[index % len(colours)], label=labels[index])
            axis.set_xlabel(UNITS[transform], fontsize=8)
            axis.set_title(f"{transform}: {name}", fontsize=9)
            axis.tick_params(labelsize=7)
            axis.grid(alpha=0.3)
            if column == 3:
                axis.set_ylim(-0.02, 1.02)
    axes[0, 3].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return figure


def _examples_panel(axis, curves: InvarianceCurves) -> None:
    """The example transformed images side by side, with a thin white gap between them."""
    if not curves.examples:
        axis.axis("off")
        return
    height = curves.examples[0][1].shape[0]
    gap = np.ones((height, max(2, height // 40), 3))
    tiles = []
    for _, image in curves.examples:
        tiles += [image, gap]
    axis.imshow(np.concatenate(tiles[:-1], axis=1))
    axis.set_xticks([(i + 0.5) * (height + gap.shape[1]) - gap.shape[1] / 2 for i in range(len(curves.examples))])
    axis.set_xticklabels([f"{amount:g}" for amount, _ in curves.examples], fontsize=8)
    axis.set_yticks([])
    axis.set_title(f"{curves.transform}: examples ({UNITS[curves.transform]})", fontsize=9)


def _image_label(name: str, class_name: str) -> str:
    return f"{Path(name).stem} ({class_name})"


def run_invariance(model: ImageClassifier, images: Sequence[str | Path], out: str | Path, progress: bool = False,
                   **options) -> Path:
    """``convlens invariance``: the curves and the Fig. 5 figure in output folder ``out``.

    ``options`` go to ``invariance`` (transforms, amounts, layers, targets, points, batch_size).
    """
    from convlens.output import output_dir

    with output_dir(out, "invariance") as folder:
        with folder.timed():
            result = invariance(model, images, progress=progress, **options)
        arrays = {}
        for name, curves in result.curves.items():
            arrays.update({f"{name}_amounts": curves.amounts, f"{name}_early_distance": curves.early_distance,
                           f"{name}_late_distance": curves.late_distance, f"{name}_probability": curves.probability})
        folder.add_arrays(input=result.inputs, **arrays)
        folder.update(
            inputs=result.images, model=model.describe(), layers={"early": result.layers[0], "late": result.layers[1]},
            targets=[{"index": t, "name": model.class_name(t)} for t in result.targets],
            clean_probability=result.clean_probability,
            parameters={"transforms": {name: c.amounts.tolist() for name, c in result.curves.items()},
                        "points": options.get("points"), "batch_size": options.get("batch_size", 32)})
        folder.save_figure(invariance_figure(model, result, title=f"{model.spec}: invariance"), "invariance.png")
    return Path(out)
