"""Folder CAM on Ray: the adapter between the generic runner and ``convlens.cam``'s methods.

Each actor builds the CAM method once (its layer probe included) and explains its batches; gradient methods
run with gradients on (the runner never wraps a batch in ``inference_mode``; ``BaseCAM`` turns it on only for
the parts without gradients). A shard row per image: ``path``, ``error``, ``target``, ``predicted``, ``score``,
``probability`` (of the predicted class), ``cam`` (input resolution, 0..1) and ``cam_raw`` (the layer's
resolution; ``cam_raw.LAYER`` per layer when several are fused), each map with its shape beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convlens.distributed.cluster import RayOptions
from convlens.distributed.result import PREVIEW, ShardedResult, column_arrays
from convlens.distributed.runner import RunRecord, run_job
from convlens.distributed.shards import read_shards
from convlens.models.classifier import ImageClassifier
from convlens.progress import ProgressLike


class CAMJob:
    name = "cam"

    def __init__(self, method: str, layers: Sequence[str] | None, target: str | int | None,
                 batch_size: int, labels: Sequence[int | None]) -> None:
        self.method = method
        self.layers = list(layers) if layers else None
        self.target = "predicted" if target is None else target
        self.batch_size = batch_size
        self.labels = list(labels)
        self._extractor = None  # built on each actor, once

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_extractor": None, "labels": []}  # the labels stay on the driver

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "layers": self.layers, "target": str(self.target)}

    def process(self, model: ImageClassifier, inputs, indices: np.ndarray) -> dict[str, Any]:
        from convlens.cam.methods import cam_method

        if self._extractor is None:
            self._extractor = cam_method(self.method)(model, self.layers, batch_size=self.batch_size)
        result = self._extractor(inputs, self.target)
        arrays = {name: value for name, value in result.arrays().items() if name not in ("input", "label")}
        if "probability" not in arrays and result.logits is not None:
            probabilities = result.logits.softmax(1)
            arrays["probability"] = probabilities.gather(1, probabilities.argmax(1, keepdim=True))[:, 0].numpy()
        return {name: list(value) if value.ndim > 1 else value.tolist() for name, value in arrays.items()}

    def reduce_shard(self, table):
        return table

    def finish(self, model: ImageClassifier, run: RunRecord) -> ShardedResult:
        table = read_shards(run.store.folder)
        readable = table.filter(np.asarray([not e for e in table.column("error").to_pylist()], dtype=bool))
        names = [n for n in readable.column_names if n not in ("index", "path", "error")
                 and not n.endswith(".shape")]
        preview = readable.slice(0, PREVIEW)
        arrays = column_arrays(preview, names)
        indices = preview.column("index").to_pylist()
        arrays["input"] = model.prepare([run.paths[i] for i in indices]).cpu().numpy() if indices else \
            np.zeros((0, 3, *model.input_size), dtype=np.float32)
        arrays["index"] = np.asarray(indices, dtype=np.int64)
        labels = [self.labels[i] if i < len(self.labels) else None for i in indices]
        if any(label is not None for label in labels):
            arrays["label"] = np.array([-1 if label is None else label for label in labels], dtype=np.int64)
        predicted = readable.column("predicted").to_numpy()
        known = [(self.labels[i], int(p)) for i, p in zip(readable.column("index").to_pylist(), predicted,
                                                            strict=True)
                 if i < len(self.labels) and self.labels[i] is not None]
        info = {
            "command": "cam",
            "model": model.describe(),
            "method": self.method,
            "layer": self.layers,
            "targets": {"spec": str(self.target)},
            "inputs": len(run.paths),
            "images_explained": len(readable),
            "unreadable": run.errors,
            "accuracy": round(float(np.mean([a == b for a, b in known])), 6) if known else None,
            "preview": {"images": len(indices), "note": f"arrays.npz holds the first {PREVIEW} readable images; "
                                                         "shards/*.parquet every image"},
            "ray": run.ray,
            "compute_seconds": run.compute_seconds,
        }
        return ShardedResult(arrays, info, run.store.folder)


def cam_on_ray(model: ImageClassifier, images: Sequence[str | Path], out: str | Path, *,
               method: str = "gradcam", layer: str | Sequence[str] | None = None,
               target: str | int | None = None, batch_size: int = 16, limit: int = 0,
               ray: str = "local", workers: int = 1, gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0,
               shard_size: int = 256, resume: bool = False, progress: ProgressLike = False) -> ShardedResult:
    """``convlens cam --ray``: ``method``'s map of every image of ``images`` (files or folders; ``limit`` per
    folder as in-process, 0: all) on Ray workers; writes ``out`` (preview arrays, summary, ``shards/``)."""
    from convlens.cam.methods import cam_method
    from convlens.cam.run import collect_images

    cam_method(method)  # an unknown name fails before Ray starts
    found = collect_images(images, model.class_names, limit)
    layers = [layer] if isinstance(layer, str) else layer
    job = CAMJob(method, layers, target, batch_size, found.labels)
    options = RayOptions(ray, workers, gpus_per_worker, cpus_per_worker)
    return run_job(job, model, found.paths, out, options, batch_size=batch_size, shard_size=shard_size,
                   resume=resume, progress=progress)
