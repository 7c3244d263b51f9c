"""Every map-producing method as a candidate: a name and a function from a batch and its classes to maps.

The CAM family comes from ``convlens.cam.METHODS`` (a method registered there is a candidate at once), the
gradient rules, SmoothGrad, Integrated Gradients and Guided Grad-CAM from ``convlens.attribution``, occlusion
from ``convlens.occlusion``; ``random`` (uniform noise) and ``center`` (a centred Gaussian, sigma a quarter of
the shorter side) are the baselines. Every map is ``N x H x W`` at the input's resolution, scaled to [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from convlens.errors import ConvlensError, nearest_names
from convlens.progress import ProgressLike

BASELINES = ("random", "center")


def cam_names() -> list[str]:
    from convlens.cam import METHODS

    return list(METHODS)


def method_names() -> list[str]:
    """Every candidate's CLI name: the CAM family, the attribution methods, occlusion, the two baselines."""
    from convlens.attribution import METHODS as ATTRIBUTION

    return [*cam_names(), *ATTRIBUTION, "occlusion", *BASELINES]


def canonical(name: str) -> str:
    """A method's canonical name (case and punctuation forgiving), or an error listing the valid names."""
    from convlens.attribution import method_name
    from convlens.cam import cam_method

    key = name.strip().lower()
    if key in method_names():
        return key
    for resolve in (lambda n: cam_method(n).name, method_name):
        try:
            return resolve(key)
        except ConvlensError:
            pass
    if key in ("centre", "centre-gaussian", "center-gaussian"):
        return "center"
    close = ", ".join(nearest_names(key, method_names()))
    raise ConvlensError(f"unknown method {name!r} (nearest: {close}); valid: all, {', '.join(method_names())}")


def resolve_methods(methods: str | Sequence[str]) -> list[str]:
    """``"all"``, a comma-separated string or a list of names to canonical names, in order, without repeats."""
    items = [m for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    items = [m.strip() for m in items if m and m.strip()]
    if not items:
        raise ConvlensError(f"no methods given; valid: all, {', '.join(method_names())}")
    names: list[str] = []
    for item in items:
        for name in method_names() if item.lower() == "all" else [canonical(item)]:
            if name not in names:
                names.append(name)
    return names


def baseline_maps(name: str, count: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """``random``: uniform noise from a generator seeded with ``seed``; ``center``: a centred Gaussian."""
    height, width = size
    if name == "random":
        return torch.rand((count, height, width), generator=torch.Generator().manual_seed(seed))
    sigma = min(height, width) / 4
    rows = torch.arange(height, dtype=torch.float32) - (height - 1) / 2
    cols = torch.arange(width, dtype=torch.float32) - (width - 1) / 2
    gaussian = torch.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / (2 * sigma ** 2))
    return gaussian.expand(count, height, width).clone()


def explanation_maps(model, inputs: torch.Tensor, classes: Sequence[int], method: str,
                     options: dict | None = None, batch_size: int = 32, seed: int = 0,
                     progress: ProgressLike = False) -> torch.Tensor:
    """``N x H x W`` maps in [0, 1] of ``method`` for the class logits ``classes``; ConvlensError when the
    method does not apply to the model."""
    return Explainer(model, method, options, batch_size, seed, progress)(inputs, classes)


class Explainer:
    """``explanation_maps`` bound to a model and a method, for repeated calls on the same model (the sanity
    check's, after each randomised layer): a CAM's extractor, with its layer resolved (a forward pass for the
    default layer), is built on the first call and reused while the input size stays the same."""

    def __init__(self, model, method: str, options: dict | None = None, batch_size: int = 32, seed: int = 0,
                 progress: ProgressLike = False) -> None:
        self.model, self.method, self.options = model, method, dict(options or {})
        self.batch_size, self.seed, self.progress = batch_size, seed, progress
        self._extractor = None
        self._extractor_size: tuple[int, int] | None = None

    def __call__(self, inputs: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
        from convlens.cam import min_max_per_image

        options = dict(self.options)
        classes = [int(c) for c in classes]
        method = self.method
        if method in BASELINES:
            return min_max_per_image(baseline_maps(method, len(inputs), tuple(inputs.shape[-2:]), self.seed))
        if method in cam_names():
            return self._cam(inputs.shape[-2:])(inputs, classes).maps.float()
        if method == "occlusion":
            return _occlusion_maps(self.model, inputs, classes, options, self.batch_size, self.progress)
        from convlens.attribution import attribute, attribution_maps

        options.setdefault("seed", self.seed)
        attributions = attribute(self.model, inputs, classes, method, batch_size=self.batch_size,
                                 progress=self.progress, **options)
        return min_max_per_image(attribution_maps(attributions, method))

    def _cam(self, size):
        size = tuple(size)
        if self._extractor is None or self._extractor_size != size:
            from convlens.cam import cam_method

            options = dict(self.options)
            layer = options.pop("layer", None)
            options.setdefault("input_size", size)
            self._extractor = cam_method(self.method)(self.model, layer,
                                                      batch_size=options.pop("batch_size", self.batch_size),
                                                      **options)
            self._extractor_size = size
        return self._extractor


def _occlusion_maps(model, inputs, classes, options, batch_size, progress) -> torch.Tensor:
    """Occlusion's per-pixel probability drop; occlusion explains one image per call (its windows batched)."""
    from convlens.cam import min_max_per_image
    from convlens.occlusion import occlusion
    from convlens.progress import track

    maps = []
    for index in track(range(len(inputs)), len(inputs), "occlusion: images", progress):
        result = occlusion(model, inputs[index:index + 1], target=classes[index], rule=None,
                           batch_size=options.get("batch_size"), window=options.get("window", options.get("size")),
                           stride=options.get("stride"), fill=options.get("fill", "mean"))
        maps.append(result.attribution)
    return min_max_per_image(torch.stack(maps).float())
