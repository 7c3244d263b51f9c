"""``convlens.faithfulness``: every metric on every method, one table.

Maps are computed once per method for the images (and, for the pointing game, for each object's class); the
metrics then run their perturbed inputs in batches. A method that does not apply to the model (CAM without a
global-average-pooling head) is marked not applicable and the run goes on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from convlens.errors import ConvlensError, nearest_names
from convlens.faithfulness.candidates import Explainer, explanation_maps, resolve_methods
from convlens.faithfulness.confidence import confidence_scores
from convlens.faithfulness.deletion import area_under_curve, causal_curves, pixels_per_step
from convlens.faithfulness.pointing import TOLERANCE, best_classes, pointing_hits, pointing_trials
from convlens.faithfulness.result import FaithfulnessResult
from convlens.faithfulness.road import NOISE, PERCENTILES, road_scores
from convlens.faithfulness.sanity import randomisation_curves
from convlens.faithfulness.table import (
    METRICS,
    NOT_APPLICABLE,
    bootstrap_class_mean,
    bootstrap_mean,
    score_names,
)
from convlens.hooks import preserved_state
from convlens.models.classifier import ImageClassifier, ImagesLike, as_batch, as_module
from convlens.progress import ProgressLike, track
from convlens.targets import ClassTarget, TargetSpec, resolve_targets


def resolve_metrics(metrics: str | Sequence[str] | None, has_boxes: bool) -> list[str]:
    """Metric names in the table's order; None: all (the pointing game only with boxes)."""
    if metrics is None:
        return [m for m in METRICS if m != "pointing" or has_boxes]
    items = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    items = [m.strip().lower() for m in items if m and m.strip()]
    if not items:
        raise ConvlensError(f"no metrics given; valid: {', '.join(METRICS)}")
    for item in items:
        if item not in METRICS:
            close = ", ".join(nearest_names(item, list(METRICS)))
            raise ConvlensError(f"unknown metric {item!r} (nearest: {close}); valid: {', '.join(METRICS)}")
    if "pointing" in items and not has_boxes:
        raise ConvlensError("the pointing game needs boxes (--boxes FILE, in the format of photos/boxes.json)")
    return [m for m in METRICS if m in items]


def image_paths(images: ImagesLike) -> list[str | None] | None:
    """The file of each image when images are given as paths, else None."""
    items = images if isinstance(images, (list, tuple)) else [images]
    if all(isinstance(item, (str, Path)) for item in items):
        return [str(item) for item in items]
    return None


def faithfulness(model: ImageClassifier | torch.nn.Module, images: ImagesLike, *,
                 methods: str | Sequence[str] = "all", metrics: str | Sequence[str] | None = None,
                 boxes: str | Path | dict | None = None, target: TargetSpec | Sequence[TargetSpec] = "predicted",
                 options: dict[str, dict] | None = None, batch_size: int = 32, step: int | None = None,
                 percentiles: Sequence[float] = PERCENTILES, noise: float = NOISE, sanity_steps: int | None = 8,
                 sanity_seed: int = 42, tolerance: float = TOLERANCE, resamples: int = 2000, seed: int = 0,
                 progress: ProgressLike = False) -> FaithfulnessResult:
    """Score every method's maps with the faithfulness metrics and tabulate them.

    ``methods``: ``"all"`` or names (``gradcam,scorecam,guided,occlusion,random,center``...). ``metrics``:
    ``deletion``, ``insertion``, ``road``, ``drop`` (average drop and increase in confidence), ``pointing`` (needs
    ``boxes``: a JSON file or dict in the format of ``photos/boxes.json``, images given as files) and
    ``sanity`` (cascading randomisation); default all. ``target``: the class explained (default each image's
    predicted class); scores are its softmax probability. ``options``: per method, keyword arguments for it
    (``{"occlusion": {"size": 32, "stride": 16}, "gradcam": {"layer": "layer4"}}``). ``step``: pixels per
    deletion/insertion step (default 224 at 224 x 224, scaled with the area). ``percentiles``, ``noise``: ROAD's.
    ``sanity_steps``: checkpoints along the randomisation cascade (None: after every layer, as Quantus).
    ``tolerance``: the pointing game's, in pixels of the original file. ``resamples``: bootstrap resamples.
    ``seed``: the random baseline, SmoothGrad's noise, ROAD's noise and the bootstrap.
    """
    names = resolve_methods(methods)
    chosen = resolve_metrics(metrics, boxes is not None)
    options = {key.lower(): dict(value) for key, value in (options or {}).items()}
    paths = image_paths(images)
    inputs = as_batch(model, images)
    start = time.perf_counter()
    trials = _trials(model, boxes, paths) if "pointing" in chosen else []
    module = as_module(model)
    with preserved_state(module) as net:
        with torch.inference_mode():
            logits = net(inputs)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise ConvlensError("the faithfulness metrics need a model whose output is one N x classes tensor")
        targets = resolve_targets(model, target, logits.detach())
        if not all(isinstance(t, ClassTarget) for t in targets):
            raise ConvlensError("faithfulness explains classes: give targets as class indices, names or 'predicted'")
        classes = [t.index for t in targets]
        trial_classes = best_classes(trials, logits.detach().float().cpu()) if trials else []
        rows, trial_rows = _rows(classes, trials, trial_classes)
        row_inputs = inputs[torch.tensor([image for image, _ in rows], device=inputs.device)]
        row_classes = [cls for _, cls in rows]
        count = len(inputs)

        def maps_of(method: str, batch: torch.Tensor, labels: Sequence[int]) -> torch.Tensor:
            return explanation_maps(model, batch, labels, method, options.get(method), batch_size, seed)

        maps: dict[str, torch.Tensor] = {}
        not_applicable: dict[str, str] = {}
        per_image: dict[str, dict[str, np.ndarray]] = {}
        curves: dict[str, np.ndarray] = {}
        class_tensor = torch.tensor(classes, device=inputs.device)
        for method in track(names, len(names), "faithfulness: methods", progress):
            try:
                all_maps = maps_of(method, row_inputs, row_classes).detach().float().cpu()
            except ConvlensError as error:
                not_applicable[method] = str(error)
                continue
            maps[method] = all_maps[:count]
            per_image[method], method_curves = _metrics(net, inputs, all_maps, class_tensor, chosen, trials,
                                                        trial_rows, step, percentiles, noise, seed, batch_size,
                                                        tolerance)
            curves.update({f"{kind}.{method}": value for kind, value in method_curves.items()})
        sanity_layers: list[str] = []
        if "sanity" in chosen and maps:
            # one explainer per method for the whole cascade (a CAM's layer is resolved once)
            explainers = {m: Explainer(model, m, options.get(m), batch_size, seed) for m in maps}
            sanity_layers, sanity = randomisation_curves(
                net, maps, lambda m: _safe_maps(explainers[m], inputs, classes), sanity_steps, sanity_seed, progress)
            for method, similarity in sanity.items():
                for key, values in similarity.items():
                    curves[f"sanity_{key}_curve.{method}"] = values
                    with np.errstate(all="ignore"):
                        per_image[method][f"sanity_{key}"] = np.nanmean(values, axis=0) if len(values) else values
    seconds = time.perf_counter() - start
    table = _table(names, chosen, per_image, not_applicable, trials, resamples, seed)
    is_classifier = isinstance(model, ImageClassifier)
    return FaithfulnessResult(
        methods=tuple(names), metrics=tuple(chosen), table=tuple(table), per_image=per_image, curves=curves,
        maps=maps, not_applicable=not_applicable, inputs=inputs.detach().float().cpu(), classes=tuple(classes),
        trials=tuple(_trial_record(t, c) for t, c in zip(trials, trial_classes, strict=True)),
        sanity_layers=tuple(sanity_layers), image_names=tuple(Path(p).name for p in paths) if paths else (),
        parameters={"batch_size": batch_size, "step": step or pixels_per_step(*inputs.shape[-2:]),
                    "percentiles": list(percentiles), "noise": noise, "sanity_steps": sanity_steps,
                    "sanity_seed": sanity_seed, "tolerance": tolerance, "resamples": resamples, "seed": seed,
                    "options": options, "target": str(target) if not isinstance(target, (list, tuple)) else
                    [str(t) for t in target]},
        model_info=model.describe() if is_classifier else {"spec": type(module).__name__},
        class_names=tuple(model.class_names) if is_classifier else (),
        display=np.stack([model.preprocessing.to_display(x) for x in inputs]) if is_classifier else None,
        compute_seconds=seconds)


def _trials(model, boxes, paths):
    if not isinstance(model, ImageClassifier):
        raise ConvlensError("the pointing game maps boxes through the model's preprocessing: load the model with "
                            "convlens.load_model")
    if paths is None:
        raise ConvlensError("the pointing game needs the images as files (the boxes name them)")
    return pointing_trials(boxes, paths, model.preprocessing)


def _rows(classes: list[int], trials, trial_classes: list[int]):
    """(image, class) pairs to explain: each image's target, then each object's class where it differs."""
    rows = [(i, c) for i, c in enumerate(classes)]
    index = {row: i for i, row in enumerate(rows)}
    trial_rows = []
    for trial, cls in zip(trials, trial_classes, strict=True):
        key = (trial.image, cls)
        if key not in index:
            index[key] = len(rows)
            rows.append(key)
        trial_rows.append(index[key])
    return rows, trial_rows


def _safe_maps(explain, inputs: torch.Tensor, classes: list[int]) -> torch.Tensor:
    try:
        return explain(inputs, classes).detach().float().cpu()
    except ConvlensError:
        return torch.full((len(inputs), *inputs.shape[-2:]), float("nan"))


def _metrics(net, inputs, all_maps, classes, chosen, trials, trial_rows, step, percentiles, noise, seed,
             batch_size, tolerance) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    count = len(inputs)
    maps = all_maps[:count]
    scores: dict[str, np.ndarray] = {}
    curves: dict[str, np.ndarray] = {}
    for mode in ("deletion", "insertion"):
        if mode in chosen:
            curve = causal_curves(net, inputs, maps, classes, mode, step, batch_size)
            curves[f"{mode}_curve"] = curve.numpy()
            scores[mode] = area_under_curve(curve).numpy()
    if "road" in chosen:
        road = road_scores(net, inputs, maps, classes, percentiles, noise, seed, batch_size)
        curves["road_morf"], curves["road_lerf"] = road["morf"].numpy(), road["lerf"].numpy()
        curves["road_clean"] = road["clean"].numpy()
        scores["road"] = road["combined"].numpy()
    if "drop" in chosen:
        confidence = confidence_scores(net, inputs, maps, classes, batch_size)
        scores["drop"], scores["increase"] = confidence["drop"].numpy(), confidence["increase"].numpy()
    if "pointing" in chosen:
        hits = pointing_hits(trials, all_maps[torch.tensor(trial_rows, dtype=torch.long)], tolerance)
        scores["pointing"] = hits
    return scores, curves


def _table(names, chosen, per_image, not_applicable, trials, resamples, seed) -> list[dict]:
    rows = []
    object_names = [t.name for t in trials]
    for method in names:
        if method in not_applicable:
            rows.append({"method": method, "scores": {}, "note": f"{NOT_APPLICABLE}: {not_applicable[method]}"})
            continue
        values = per_image[method]
        scores = {}
        for score in score_names(chosen):
            if score == "pointing":
                scores[score] = bootstrap_class_mean(values[score], object_names, resamples, seed)
            elif score in values:
                scores[score] = bootstrap_mean(values[score], resamples, seed)
        rows.append({"method": method, "scores": scores, "note": ""})
    return rows


def _trial_record(trial, cls: int) -> dict:
    return {"image": trial.image, "object": trial.name, "class": cls, "box": list(trial.box)}
