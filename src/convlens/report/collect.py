"""Everything a report shows, computed once: the shared pass, then each method through ``compute``."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlens.errors import ConvlensError
from convlens.models.classifier import ImageClassifier
from convlens.predict import Prediction, top_k
from convlens.progress import ProgressLike, report, track
from convlens.report import compute
from convlens.report.scan import Scan, shared_pass


@dataclass(frozen=True)
class ImageEntry:
    index: int
    slug: str  # page name: images/SLUG.html
    path: Path
    predictions: list[Prediction]


@dataclass(frozen=True)
class FeatureVizOptions:
    """What ``report(feature_viz=...)`` optimises: on each of ``layers`` (None: every layer with pages), the
    ``units`` strongest of its unit pages (None: every one), ``steps`` Adam steps at ``size`` px (None: the model's
    input size), ``diversity`` images per unit (more than 1: Lucid's diversity set, shown on the unit page)."""

    layers: tuple[str, ...] | None = None
    units: int | None = None
    steps: int = 512
    size: int | None = None
    diversity: int = 1


@dataclass(frozen=True)
class Options:
    layers: tuple[str, ...] | None = None  # None: the end of each stage (``featuremaps.default_layers``)
    units: int | None = 16  # unit pages per layer, strongest mean activation first; None: every unit
    k: int = 9
    methods: tuple[str, ...] | None = None  # CAM methods; None: all
    cam_layer: str | None = None
    details: int = 8  # images that get occlusion, invariance and deconv projections (long to compute)
    rule: str = "auto"  # deconv rule of the unit pages' projections (auto: guided on strided networks)
    feature_viz: FeatureVizOptions | None = None  # feature visualization on the unit pages (long); None: none
    batch_size: int = 32
    max_cam_passes: int = 4096  # Score-CAM / Ablation-CAM beyond this many forward passes: a note (unless asked)


@dataclass
class Collected:
    model: ImageClassifier
    images: list[ImageEntry]
    scan: Scan
    options: Options
    layers: list[str]
    unit_pages: dict[str, list[int]]
    convs: dict[str, str | None]  # layer -> the convolution whose filters make its channels
    cam_layer: str
    projection_layer: str
    cams: dict[str, Any] = field(default_factory=dict)  # method -> result over all images, or a note
    examples: dict[str, Any] = field(default_factory=dict)  # layer -> TopExamples, or a note
    projections: dict[int, Any] = field(default_factory=dict)  # image index -> result, or a note
    occlusions: dict[int, Any] = field(default_factory=dict)
    invariances: dict[int, Any] = field(default_factory=dict)
    faithfulness: Any = None
    feature_viz: dict[str, Any] = field(default_factory=dict)  # layer -> result over its unit pages, or a note
    seconds: dict[str, float] = field(default_factory=dict)


def image_paths(images: str | Path | Sequence[str | Path]) -> list[Path]:
    from convlens.data.images import expand_image_args

    arguments = [images] if isinstance(images, (str, Path)) else list(images)
    if not arguments:
        raise ConvlensError("no images given")
    if not all(isinstance(a, (str, Path)) for a in arguments):
        raise ConvlensError("a report takes image files or folders (paths), not tensors or PIL images")
    paths = expand_image_args([Path(a) for a in arguments])
    if not paths:
        raise ConvlensError(f"no images found in {', '.join(map(str, arguments))}")
    return paths


def slugs(paths: Sequence[Path]) -> list[str]:
    """``003-chelsea``: the index keeps names unique and in order; the stem makes them readable."""
    width = max(3, len(str(len(paths) - 1)))
    return [f"{i:0{width}d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', p.stem)[:40]}" for i, p in enumerate(paths)]


def collect(model: ImageClassifier, images, options: Options, progress: ProgressLike = False,
            ray=None) -> Collected:
    """``ray``: ``distributed.RayOptions`` to run the shared pass on Ray (``report.on_ray``; same scan)."""
    paths = image_paths(images)
    layers = list(options.layers) if options.layers else compute.default_layers(model)
    steps = ["scan", "examples", "cam", "details", "faithfulness"] + (["feature_viz"] if options.feature_viz else [])
    seconds: dict[str, float] = {}
    scan = None
    result: Collected | None = None
    for step in track(steps, len(steps), "report", progress if callable(progress) else False):
        start = time.perf_counter()
        if step == "scan":
            if ray is None:
                scan = shared_pass(model, paths, layers, options.k, options.batch_size, progress)
            else:
                from convlens.report.on_ray import scan_on_ray

                scan = scan_on_ray(model, paths, layers, options.k, options.batch_size, ray, progress)
            result = _start(model, paths, scan, layers, options)
        else:
            STEPS[step](result, progress)
        seconds[step] = time.perf_counter() - start
    result.seconds = seconds
    return result


def _start(model: ImageClassifier, paths: list[Path], scan: Scan, layers: list[str], options: Options) -> Collected:
    predictions = top_k(model, scan.probabilities, 3)
    entries = [ImageEntry(i, slug, path, predictions[i]) for i, (slug, path) in enumerate(zip(slugs(paths), paths,
                                                                                              strict=True))]
    unit_pages = {}
    for name, layer in scan.layers.items():
        ranked = [int(u) for u in layer.ranking]
        unit_pages[name] = sorted(ranked if options.units is None else ranked[:options.units])
    convs = {name: compute.feeding_conv(model, name, scan.layers[name].channels) for name in layers}
    cam_layer = options.cam_layer or compute.default_cam_layer(model)
    return Collected(model, entries, scan, options, layers, unit_pages, convs, cam_layer,
                     projection_layer=layers[len(layers) // 2])


def inputs_of(result: Collected, indices: Sequence[int] | None = None) -> torch.Tensor:
    """The preprocessed inputs of the images (kept by the scan, or decoded again in batches)."""
    indices = list(range(len(result.images))) if indices is None else list(indices)
    if result.scan.inputs is not None:
        return result.scan.inputs[indices].to(result.model.device)
    return torch.cat([result.model.prepare([result.images[i].path for i in indices[start:start + 32]])
                      for start in range(0, len(indices), 32)])


def _examples(result: Collected, progress: ProgressLike) -> None:
    for name in result.layers:
        try:
            result.examples[name] = compute.top_examples(result.model, result.scan.layers[name],
                                                         result.unit_pages[name], result.options.rule,
                                                         batch_size=result.options.batch_size)
        except (ConvlensError, RuntimeError) as exc:
            result.examples[name] = f"top-{result.options.k} projections could not be computed: {exc}"


def _cam(result: Collected, progress: ProgressLike) -> None:
    methods = result.options.methods or compute.report_cam_methods()
    inputs = inputs_of(result)
    for method in methods:
        layer = None if method == "cam" else result.cam_layer  # CAM reads the layer global pooling reads
        passes = compute.cam_extra_passes(result.model, method, result.cam_layer, len(inputs))
        if result.options.methods is None and passes > result.options.max_cam_passes:
            result.cams[method] = (f"{compute.cam_methods()[method]} runs the model once per channel of "
                                   f"{result.cam_layer} and image ({passes} forward passes), over the report's "
                                   f"budget of {result.options.max_cam_passes}; `--method {method}` computes it "
                                   "anyway, `--cam-layer` picks a layer with fewer channels")
            continue
        try:
            result.cams[method] = compute.cam(result.model, inputs, method, layer,
                                              batch_size=min(16, result.options.batch_size))
        except ConvlensError as exc:
            result.cams[method] = f"{compute.cam_methods().get(method, method)} could not be computed: {exc}"
        report(progress, f"report: {method}", list(methods).index(method) + 1, len(methods))


def _details(result: Collected, progress: ProgressLike) -> None:
    shown = result.images[:max(0, result.options.details)]
    for count, entry in enumerate(shown, 1):
        inputs = inputs_of(result, [entry.index])
        parts = {"projections": partial(compute.strongest_projections, result.model, inputs, result.projection_layer),
                 # half-window steps (Zeiler & Fergus's grid is finer): a quarter of the forward passes
                 "occlusions": partial(compute.occlusion, result.model, inputs, str(entry.path),
                                       stride=max(1, round(min(result.model.input_size) / 14))),
                 "invariances": partial(compute.invariance, result.model, [entry.path],
                                        points={"translate": 9, "scale": 5, "rotate": 13})}
        for name, run in parts.items():
            try:
                getattr(result, name)[entry.index] = run()
            except (ConvlensError, RuntimeError) as exc:
                getattr(result, name)[entry.index] = f"could not be computed: {exc}"
        report(progress, "report: occlusion, invariance, projections", count, len(shown))
    skipped = len(result.images) - len(shown)
    if skipped > 0:
        note = (f"long to compute, so the report computes it for the first {len(shown)} images only (`--details "
                f"N` for more)")
        for entry in result.images[len(shown):]:
            result.projections[entry.index] = result.occlusions[entry.index] = note
            result.invariances[entry.index] = note


def _faithfulness(result: Collected, progress: ProgressLike) -> None:
    result.faithfulness = compute.faithfulness(result.model, inputs_of(result))


def _feature_viz(result: Collected, progress: ProgressLike) -> None:
    plan = result.options.feature_viz
    paths = [entry.path for entry in result.images]
    for name in result.layers if plan.layers is None else plan.layers:
        pages = set(result.unit_pages[name])
        strongest = [int(u) for u in result.scan.layers[name].ranking if int(u) in pages]
        units = sorted(strongest if plan.units is None else strongest[:plan.units])
        result.feature_viz[name] = compute.feature_visualization(
            result.model, name, units, paths, steps=plan.steps, size=plan.size, diversity=plan.diversity)


def arrays(result: Collected) -> dict[str, np.ndarray]:
    values = {"input": result.scan.inputs.numpy() if result.scan.inputs is not None else
              np.zeros((0, 3, *result.model.input_size), np.float32),
              "probabilities": result.scan.probabilities.numpy()}
    for name, layer in result.scan.layers.items():
        values[f"mean_activation/{name}"] = layer.means
        top_values = layer.top.values.numpy().copy()
        top_values[layer.top.images.numpy() < 0] = np.nan  # empty slots, as in convlens.top_activations
        values[f"top_values/{name}"] = top_values
        values[f"top_images/{name}"] = layer.top.images.numpy()
    for method, cam in result.cams.items():
        if not isinstance(cam, str):
            values[f"cam/{method}"] = cam.arrays()["cam"]
    return values


STEPS = {"examples": _examples, "cam": _cam, "details": _details, "faithfulness": _faithfulness,
         "feature_viz": _feature_viz}
