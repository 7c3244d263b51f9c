"""Folder CAM on Ray: the adapter between the generic runner and ``convlens.cam``'s methods.

Each actor builds the CAM method once (its layer probe included) and explains its batches; gradient methods
run with gradients on (the runner never wraps a batch in ``inference_mode``; ``BaseCAM`` turns it on only for
the parts without gradients). A shard row per image: ``path``, ``error``, ``target``, ``predicted``, ``score``,
``probability`` (of the predicted class), ``cam`` (input resolution, 0..1) and ``cam_raw`` (the layer's
resolution; ``raw.N`` for the N-th of several fused layers) and ``logits``, each array with its shape beside it.
The result is the in-process ``CAMResult`` of the first ``PREVIEW`` readable images (its arrays, grid figure
and summary), with the job's numbers added (``OnRay``).
"""

from __future__ import annotations

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


class CAMJob:
    name = "cam"

    def __init__(self, method: str, layers: Sequence[str] | None, target: str | int | None,
                 batch_size: int, labels: Sequence[int | None], in_grid: Sequence[bool]) -> None:
        self.method = method
        self.layers = list(layers) if layers else None
        self.target = "predicted" if target is None else target
        self.batch_size = batch_size
        self.labels, self.in_grid = list(labels), list(in_grid)
        self._extractor = None  # built on each actor, once

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_extractor": None, "labels": [], "in_grid": []}  # those stay on the driver

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "layers": self.layers, "target": str(self.target)}

    def extractor(self, model: ImageClassifier):
        from convlens.cam.methods import cam_method

        if self._extractor is None:
            self._extractor = cam_method(self.method)(model, self.layers, batch_size=self.batch_size)
        return self._extractor

    def process(self, model: ImageClassifier, inputs, indices: np.ndarray) -> dict[str, Any]:
        result = self.extractor(model)(inputs, self.target)
        columns: dict[str, Any] = {"cam": list(result.maps.numpy())}
        columns.update({f"raw.{n}": list(raw.numpy()) for n, raw in enumerate(result.raw)})
        columns["target"] = [-1 if t is None else t for t in result.targets]
        columns["predicted"] = [-1 if p is None else p for p in result.predicted]
        columns["score"] = result.scores.numpy().tolist()
        if result.logits is not None:
            probabilities = result.logits.softmax(1)
            columns["probability"] = probabilities.max(1).values.numpy().tolist()
            columns["logits"] = list(result.logits.numpy())
        return columns

    def reduce_shard(self, table):
        return table

    def finish(self, model: ImageClassifier, run: RunRecord) -> OnRay:
        import dataclasses

        import torch

        from convlens.cam import CAMResult, ImageInfo

        readable = readable_rows(run.store.folder)
        preview = readable.slice(0, PREVIEW)
        indices = preview.column("index").to_pylist()
        raw_names = sorted((n for n in readable.column_names if n.startswith("raw.") and not n.endswith(".shape")),
                           key=lambda n: int(n.split(".")[1]))
        names = ["cam", "target", "predicted", "score", *raw_names]
        names += ["logits"] if "logits" in readable.column_names else []
        arrays = column_arrays(preview, names)
        inputs = model.prepare([run.paths[i] for i in indices]).cpu() if indices else \
            torch.zeros(0, 3, *model.input_size)
        extractor = self.extractor(model)
        known = lambda values: tuple(None if v < 0 else int(v) for v in values)  # noqa: E731
        info = dataclasses.replace(
            ImageInfo(tuple(model.class_names), model.preprocessing, model.describe(), target_spec=str(self.target)),
            paths=tuple(str(run.paths[i]) for i in indices),
            labels=tuple(self.labels[i] for i in indices), in_grid=tuple(self.in_grid[i] for i in indices),
            parameters={"batch_size": self.batch_size, "preview": f"the first {len(indices)} readable images; "
                        "OUT/shards/*.parquet holds every image"})
        result = CAMResult(
            self.method, tuple(extractor.layers), tuple(torch.from_numpy(arrays[n]) for n in raw_names),
            torch.from_numpy(arrays["cam"]), known(arrays["target"]), known(arrays["predicted"]),
            torch.from_numpy(arrays["score"].astype(np.float32)),
            torch.from_numpy(arrays["logits"]) if "logits" in arrays else None, input=inputs,
            title=extractor.title or self.method, info=info)
        return OnRay(result, run.ray, run.errors, run.compute_seconds, {
            "inputs_total": len(run.paths), "images_explained": len(readable),
            "accuracy": _accuracy(readable, self.labels)})


def _accuracy(readable, labels: Sequence[int | None]) -> float | None:
    """The share of readable images whose prediction is their folder's class (None without labels)."""
    pairs = [(labels[i], p) for i, p in zip(readable.column("index").to_pylist(),
                                            readable.column("predicted").to_pylist(), strict=True)
             if labels[i] is not None]
    return round(sum(a == b for a, b in pairs) / len(pairs), 6) if pairs else None


def cam_on_ray(model: ImageClassifier, images: Sequence[str | Path], out: str | Path, *,
               method: str = "gradcam", layer: str | Sequence[str] | None = None,
               target: str | int | None = None, batch_size: int = 16, limit: int = 0,
               ray: str = "local", workers: int = 1, gpus_per_worker: float = 0.0, cpus_per_worker: float | None = None,
               shard_size: int = 256, resume: bool = False, progress: ProgressLike = False) -> OnRay:
    """``convlens cam --ray``: ``method``'s map of every image of ``images`` (files or folders; ``limit`` per
    folder as in-process, 0: all) on Ray workers; writes ``out`` (the in-process output of the first
    ``PREVIEW`` readable images, the job's summary, ``shards/`` with every image) and returns the result."""
    from convlens.cam.methods import cam_method
    from convlens.cam.run import collect_images

    cam_method(method)  # an unknown name fails before Ray starts
    images = [images] if isinstance(images, (str, Path)) else images
    found = collect_images(images, model.class_names, limit)
    layers = [layer] if isinstance(layer, str) else layer
    job = CAMJob(method, layers, target, batch_size, found.labels, found.from_folder)
    options = RayOptions(ray, workers, gpus_per_worker, cpus_per_worker)
    return run_job(job, model, found.paths, out, options, batch_size=batch_size, shard_size=shard_size,
                   resume=resume, progress=progress)
