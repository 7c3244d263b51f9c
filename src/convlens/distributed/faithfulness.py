"""Faithfulness over a folder on Ray: per-image metric scores computed by the actors, the table on the driver.

Each actor calls the public ``convlens.faithfulness`` on its batch of images (every method's maps, every
metric), and returns per image: the class explained (``target``), every score (``SCORE.METHOD``), the curves
(``deletion_curve.METHOD``..., ``sanity_spearman_curve.METHOD``: one value per checkpoint), the maps
(``map.METHOD``) and, for the pointing game, the hits of the image's objects (``pointing.METHOD``) and the
objects themselves (``objects``, JSON). The driver stacks the per-image scores of all readable images in image
order and computes the table (mean and bootstrap interval) exactly as the in-process run does, so the table is
the in-process table.

Equal to the in-process run, per image, for every metric whose numbers do not draw random numbers (deletion,
insertion, average drop / increase, the pointing game, sanity) and for every method without noise (the CAM
family, gradients, Integrated Gradients, occlusion, the centre baseline). Three things draw from one generator
in-process, in the peers' order across all images (ROAD's imputation noise as pytorch-grad-cam, SmoothGrad's
noise as Captum, the random baseline's maps): an image's draws there depend on every image before it, which a
worker cannot replay. On Ray each model batch draws its own stream, seeded from ``seed`` and the batch's first
image, so those numbers are the same in distribution, not in bits (ROAD with ``noise=0`` is equal).

The result is the in-process ``FaithfulnessResult`` with per-image scores, targets and curves of every readable
image, and inputs and maps of the first ``PREVIEW`` (``OUT/shards`` holds every map).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convlens.distributed.cluster import RayOptions
from convlens.distributed.result import PREVIEW, OnRay, column_arrays
from convlens.distributed.runner import RunRecord, run_job
from convlens.distributed.shards import readable_rows
from convlens.models.classifier import ImageClassifier
from convlens.progress import ProgressLike

PER_IMAGE_CURVES = ("deletion_curve", "insertion_curve", "road_morf", "road_lerf", "road_clean")


class FaithfulnessJob:
    name = "faithfulness"

    def __init__(self, methods: list[str], metrics: list[str], boxes: dict[str, list] | None, target,
                 options: dict[str, dict], settings: dict[str, Any]) -> None:
        self.methods, self.metrics, self.boxes = methods, metrics, boxes
        self.target, self.options, self.settings = target, options, settings
        self.wants_paths = boxes is not None  # the pointing game finds an image's boxes by its file name

    def describe(self) -> dict[str, Any]:
        return {"methods": self.methods, "metrics": self.metrics, "boxes": self.boxes, "target": str(self.target),
                "options": self.options, **self.settings}

    def process(self, model: ImageClassifier, inputs, indices: np.ndarray, paths: Sequence[str] = ()) -> dict:
        from convlens.faithfulness import faithfulness

        images: Any = inputs
        boxes = None
        if self.boxes is not None:
            names = {Path(p).name for p in paths}
            boxes = {"images": {name: self.boxes[name] for name in names if name in self.boxes}}
            images = [str(p) for p in paths]  # the boxes are in the files' pixels: the game reads their sizes
        settings = dict(self.settings)
        seed = settings.pop("seed")
        settings["resamples"] = 2  # this batch's own table is not used: the driver tabulates every image
        result = faithfulness(model, images, methods=self.methods, metrics=self.metrics, boxes=boxes,
                              target=self.target, options=self.options, seed=batch_seed(seed, int(indices[0])),
                              **settings)
        return image_columns(result, pointing=self.boxes is not None)

    def reduce_shard(self, table):
        return table

    def finish(self, model: ImageClassifier, run: RunRecord) -> OnRay:
        readable = readable_rows(run.store.folder)
        result = merged_result(model, run, readable, self)
        return OnRay(result, run.ray, run.errors, run.compute_seconds, {
            "inputs_total": len(run.paths), "images_scored": len(readable),
            "preview": f"inputs and maps of the first {min(PREVIEW, len(readable))} readable images; "
                       "OUT/shards/*.parquet holds every image's maps"})


def batch_seed(seed: int, first: int) -> int:
    """The noise seed of the model batch starting at image ``first`` (``seed`` itself for the first batch)."""
    if first == 0:
        return seed
    return int(np.random.SeedSequence([seed, first]).generate_state(1)[0])


def image_columns(result, pointing: bool = False) -> dict[str, Any]:
    """One entry per image of a batch's ``FaithfulnessResult``: target, scores, curves, maps, pointing."""
    count = len(result.classes)
    columns: dict[str, Any] = {"target": list(result.classes)}
    dtypes: dict[str, str] = {}
    for method, scores in result.per_image.items():
        for score, values in scores.items():
            if score == "pointing":
                continue
            columns[f"{score}.{method}"] = [float(v) for v in np.asarray(values)]
            dtypes[f"{score}.{method}"] = np.asarray(values).dtype.str
    for key, values in result.curves.items():
        values = np.asarray(values)
        per_image = values if key.split(".")[0] in PER_IMAGE_CURVES else values.T  # sanity: checkpoints x N
        columns[key] = [row if row.ndim else float(row) for row in per_image]
        dtypes[key] = values.dtype.str
    for method, maps in result.maps.items():
        columns[f"map.{method}"] = list(maps.numpy())
    if pointing:  # every batch has the columns, also one whose images have no boxes
        owners = np.array([t["image"] for t in result.trials], dtype=np.int64)
        for method, scores in result.per_image.items():
            hits = np.asarray(scores.get("pointing", []), dtype=np.float64)
            columns[f"pointing.{method}"] = [hits[owners == i].tolist() for i in range(count)]
        columns["objects"] = [json.dumps([{k: v for k, v in t.items() if k != "image"} for t in result.trials
                                          if t["image"] == i]) for i in range(count)]
    meta = json.dumps({"not_applicable": result.not_applicable, "sanity_layers": list(result.sanity_layers),
                       "dtypes": dtypes})
    columns["meta"] = [meta] * count
    return columns


def merged_result(model: ImageClassifier, run: RunRecord, readable, job: FaithfulnessJob):
    """The in-process ``FaithfulnessResult`` of the readable images, from their shard rows."""
    import torch

    from convlens.faithfulness import FaithfulnessResult, pixels_per_step

    meta = json.loads(readable.column("meta")[0].as_py()) if len(readable) else \
        {"not_applicable": {}, "sanity_layers": [], "dtypes": {}}
    columns = set(readable.column_names)
    per_image: dict[str, dict[str, np.ndarray]] = {}
    curves: dict[str, np.ndarray] = {}
    for name, dtype in meta["dtypes"].items():
        kind, method = name.split(".", 1)
        if kind in PER_IMAGE_CURVES or kind.endswith("_curve"):
            stacked = stack(readable, name).astype(dtype)
            curves[name] = stacked if kind in PER_IMAGE_CURVES else stacked.T
        else:
            per_image.setdefault(method, {})[kind] = np.asarray(readable.column(name).to_pylist(), dtype=dtype)
    trials = objects(readable)
    for method in per_image:
        if f"pointing.{method}" in columns:
            per_image[method]["pointing"] = np.asarray(
                [h for hits in readable.column(f"pointing.{method}").to_pylist() for h in hits or ()], dtype=np.float64)
    preview = readable.slice(0, PREVIEW)
    methods = [m for m in job.methods if m not in meta["not_applicable"]]
    maps = column_arrays(preview, [f"map.{m}" for m in methods if f"map.{m}" in columns])
    indices = preview.column("index").to_pylist()
    inputs = model.prepare([run.paths[i] for i in indices]).detach().float().cpu() if indices else \
        torch.zeros(0, 3, *model.input_size)
    settings = job.settings
    table = method_table(job.methods, job.metrics, per_image, meta["not_applicable"], trials,
                         settings["resamples"], settings["seed"])
    return FaithfulnessResult(
        methods=tuple(job.methods), metrics=tuple(job.metrics), table=tuple(table), per_image=per_image,
        curves=curves, maps={name.split(".", 1)[1]: torch.from_numpy(values) for name, values in maps.items()},
        not_applicable=meta["not_applicable"], inputs=inputs,
        classes=tuple(int(c) for c in readable.column("target").to_pylist()), trials=tuple(trials),
        sanity_layers=tuple(meta["sanity_layers"]),
        image_names=tuple(Path(run.paths[i]).name for i in readable.column("index").to_pylist()),
        parameters={"batch_size": settings["batch_size"],
                    "step": settings["step"] or pixels_per_step(*model.input_size),
                    "percentiles": list(settings["percentiles"]), "noise": settings["noise"],
                    "sanity_steps": settings["sanity_steps"], "sanity_seed": settings["sanity_seed"],
                    "tolerance": settings["tolerance"], "resamples": settings["resamples"], "seed": settings["seed"],
                    "options": job.options, "target": str(job.target)},
        model_info=model.describe(), class_names=tuple(model.class_names),
        display=np.stack([model.preprocessing.to_display(x) for x in inputs]) if len(inputs) else None,
        compute_seconds=run.compute_seconds)


def stack(table, name: str) -> np.ndarray:
    """A per-image column as one array (scalars: a vector; flattened arrays: reshaped by their shape column)."""
    if f"{name}.shape" in table.column_names:
        return column_arrays(table, [name])[name]
    return np.asarray(table.column(name).to_pylist(), dtype=np.float64)


def objects(readable) -> list[dict]:
    """Every object of the pointing game, in image order; ``image`` indexes the readable images."""
    if "objects" not in readable.column_names:
        return []
    return [{"image": row, **item} for row, text in enumerate(readable.column("objects").to_pylist())
            for item in json.loads(text or "[]")]


def method_table(methods, metrics, per_image, not_applicable, trials, resamples: int, seed: int) -> list[dict]:
    """The table over methods, as ``convlens.faithfulness`` builds it: mean and bootstrap interval per score."""
    from convlens.faithfulness.table import NOT_APPLICABLE, bootstrap_class_mean, bootstrap_mean, score_names

    rows = []
    object_names = [t["object"] for t in trials]
    for method in methods:
        if method in not_applicable:
            rows.append({"method": method, "scores": {}, "note": f"{NOT_APPLICABLE}: {not_applicable[method]}"})
            continue
        values = per_image.get(method, {})
        scores = {}
        for score in score_names(metrics):
            if score == "pointing":
                scores[score] = bootstrap_class_mean(values.get(score, np.zeros(0)), object_names, resamples, seed)
            elif score in values:
                scores[score] = bootstrap_mean(values[score], resamples, seed)
        rows.append({"method": method, "scores": scores, "note": ""})
    return rows


def faithfulness_on_ray(model: ImageClassifier, images: str | Path | Sequence[str | Path], out: str | Path, *,
                        methods: str | Sequence[str] = "all", metrics: str | Sequence[str] | None = None,
                        boxes: str | Path | dict | None = None, target="predicted",
                        options: dict[str, dict] | None = None, batch_size: int = 32, step: int | None = None,
                        percentiles: Sequence[float] | None = None, noise: float | None = None,
                        sanity_steps: int | None = 8, sanity_seed: int = 42, tolerance: float | None = None,
                        resamples: int = 2000, seed: int = 0, images_per_task: int = 16, ray: str = "local",
                        workers: int = 1, gpus_per_worker: float = 0.0, cpus_per_worker: float | None = None,
                        shard_size: int = 256, resume: bool = False, progress: ProgressLike = False) -> OnRay:
    """``convlens faithfulness --ray``: ``convlens.faithfulness`` over ``images`` (files or folders) on Ray
    workers, ``images_per_task`` images per call; the other arguments are ``convlens.faithfulness``'s. Writes
    ``out`` (the in-process output, every image's scores and the table; ``shards/`` with every image's maps)
    and returns the result."""
    from convlens.data.images import expand_image_args
    from convlens.errors import ConvlensError
    from convlens.faithfulness import PERCENTILES, read_boxes, resolve_methods, resolve_metrics
    from convlens.faithfulness.pointing import TOLERANCE
    from convlens.faithfulness.road import NOISE

    chosen_methods, chosen_metrics = resolve_methods(methods), resolve_metrics(metrics, boxes is not None)
    if images_per_task < 1:
        raise ConvlensError(f"images per task must be at least 1, got {images_per_task}")
    if isinstance(target, (list, tuple)):
        raise ConvlensError("on Ray, the target is one class for every image (a name or index) or 'predicted'")
    paths = expand_image_args([images] if isinstance(images, (str, Path)) else list(images))
    if not paths:
        raise ConvlensError("no images given")
    entries = read_boxes(boxes) if "pointing" in chosen_metrics else None
    missing = sorted(set(entries or ()) - {p.name for p in paths})
    if missing:  # as in-process, before Ray starts
        raise ConvlensError(f"boxes name images that are not given: {', '.join(missing)}")
    settings = {"batch_size": batch_size, "step": step,
                "percentiles": list(PERCENTILES if percentiles is None else percentiles),
                "noise": NOISE if noise is None else noise, "sanity_steps": sanity_steps, "sanity_seed": sanity_seed,
                "tolerance": TOLERANCE if tolerance is None else tolerance, "resamples": resamples, "seed": seed}
    job = FaithfulnessJob(chosen_methods, chosen_metrics, entries, target,
                          {k.lower(): dict(v) for k, v in (options or {}).items()}, settings)
    ray_options = RayOptions(ray, workers, gpus_per_worker, cpus_per_worker)
    return run_job(job, model, paths, out, ray_options, batch_size=images_per_task, shard_size=shard_size,
                   resume=resume, progress=progress)
