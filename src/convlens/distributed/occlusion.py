"""Folder occlusion on Ray: ``convlens.occlusion`` for every image of files and folders, one image at a time on
the actors (the occlusion engine batches the windows of one image), the maps in the shards.

A shard row per image: ``path``, ``error``, ``target``, ``predicted``, ``clean_score``, ``min_score`` and the
maps of the in-process ``OcclusionResult`` (``target_score``, ``top_class``, ``top_prob``,
``feature_activation``: rows x cols of window positions; ``attribution``: H x W; ``clean_probabilities``), each
array with its shape beside it, and how it ran (``engine``, ``feature_channel``, ``seconds``). Every number is
the one ``convlens.occlusion`` gives for that image alone. The result is the in-process ``OcclusionResult`` of
the first readable image (its arrays, both figures and summary; panel (c)'s projection is computed on the driver
for it only), with the job's numbers added (``OnRay``); ``read_shards(out)`` reads every image's maps back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlens.distributed.cluster import RayOptions
from convlens.distributed.result import OnRay, column_arrays
from convlens.distributed.runner import RunRecord, run_job
from convlens.distributed.shards import readable_rows
from convlens.errors import ConvlensError
from convlens.models.classifier import ImageClassifier
from convlens.progress import ProgressLike

IMAGES_PER_TASK = 4  # images an actor takes at a time: each is a whole occlusion run (hundreds of windows)
MAPS = ("target_score", "top_class", "top_prob", "feature_activation", "attribution", "clean_probabilities")


class OcclusionJob:
    name = "occlusion"

    def __init__(self, model: ImageClassifier, *, target, score: str, window: int | None, stride: int | None,
                 fill: str | float, layer: str | None, edges: str, rule: str | None, batch_size: int | None) -> None:
        self.settings = _checked_settings(model, target=target, score=score, window=window, stride=stride,
                                          fill=fill, layer=layer, edges=edges, batch_size=batch_size)
        self.rule = rule

    def describe(self) -> dict[str, Any]:
        return {key: str(value) for key, value in self.settings.items()}

    def process(self, model: ImageClassifier, inputs, indices: np.ndarray) -> dict[str, Any]:
        from convlens.occlusion import occlusion

        columns: dict[str, list] = {}
        for image in inputs:
            # panel (c) is skipped per image (rule=None): the driver projects the previewed image only
            result = occlusion(model, image.unsqueeze(0), rule=None, **self.settings)
            for name in MAPS:
                columns.setdefault(name, []).append(getattr(result, name).numpy())
            for name, value in _row_values(result).items():
                columns.setdefault(name, []).append(value)
        return columns

    def reduce_shard(self, table):
        return table

    def finish(self, model: ImageClassifier, run: RunRecord) -> OnRay:
        readable = readable_rows(run.store.folder)
        if len(readable) == 0:
            first = run.errors[0] if run.errors else {"path": "?", "error": "no images"}
            raise ConvlensError(f"none of the {len(run.paths)} images could be read (first: {first['error']})")
        row = readable.slice(0, 1)
        result = self._preview(model, run.paths[row.column("index")[0].as_py()], row)
        return OnRay(result, run.ray, run.errors, run.compute_seconds, {
            "inputs_total": len(run.paths), "images_explained": len(readable),
            "preview": "the first readable image; OUT/shards/*.parquet holds every image's maps"})

    def _preview(self, model: ImageClassifier, path: Path, row):
        """The in-process ``OcclusionResult`` of one image, from its shard row (plus its input, display and
        projection, which the row does not keep)."""
        from convlens.occlusion.compute import _projection, window_origins
        from convlens.occlusion.result import OcclusionResult, display_image
        from convlens.zeiler.deconv import resolve_rule

        maps = {name: torch.from_numpy(array[0]) for name, array in column_arrays(row, list(MAPS)).items()}
        values = row.to_pylist()[0]
        inputs = model.prepare([path]).cpu()
        height, width = inputs.shape[-2:]
        window, stride, edges = self.settings["window"], self.settings["stride"], self.settings["edges"]
        rule = resolve_rule(model, self.rule) if self.rule is not None else None
        layer, channel = values["layer"], int(values["feature_channel"])
        return OcclusionResult(
            **maps, input=inputs, target=None if values["target"] < 0 else int(values["target"]),
            score=self.settings["score"], clean_score=float(values["clean_score"]), feature_channel=channel,
            clean_feature_activation=float(values["clean_feature_activation"]), layer=layer, window=window,
            stride=stride, fill=values["fill"], edges=edges, batch_size=int(values["batch_size"]),
            engine=values["engine"], engine_reason=values["engine_reason"],
            incremental_nodes=int(values["incremental_nodes"]),
            row_origins=window_origins(height, window, stride, edges),
            col_origins=window_origins(width, window, stride, edges),
            projection=_projection(model, inputs.to(model.device), layer, channel, rule), rule=rule,
            display=display_image(model, inputs), image=str(path), class_names=tuple(model.class_names),
            model=model.describe(), spec=model.spec, compute_seconds=float(values["seconds"]))


def _row_values(result) -> dict[str, Any]:
    """The scalars of one image's ``OcclusionResult`` that its shard row keeps."""
    return {"target": -1 if result.target is None else result.target, "predicted": result.top_prediction,
            "clean_score": result.clean_score, "min_score": float(result.target_score.min()),
            "feature_channel": result.feature_channel, "clean_feature_activation": result.clean_feature_activation,
            "layer": result.layer, "fill": result.fill, "batch_size": result.batch_size, "engine": result.engine,
            "engine_reason": result.engine_reason, "incremental_nodes": result.incremental_nodes,
            "seconds": result.compute_seconds}


def _checked_settings(model: ImageClassifier, *, target, score: str, window: int | None, stride: int | None,
                      fill: str | float, layer: str | None, edges: str, batch_size: int | None) -> dict[str, Any]:
    """The occlusion options, checked on the driver as ``convlens.occlusion`` would check them (a bad one fails
    in one line before Ray starts, not on every actor), with the default window and stride resolved."""
    from convlens.hooks import resolve_layer
    from convlens.occlusion.compute import _check_geometry
    from convlens.perturbation.baselines import fill_image
    from convlens.targets import resolve_targets

    if callable(target):
        raise ConvlensError("occlusion on Ray takes a class index or name, or predicted, as --target")
    height, width = model.input_size
    window, stride = _check_geometry(height, width, window, stride, edges, batch_size)
    fill_image(model, torch.zeros(1, 3, height, width), fill, window)
    resolve_targets(model, target, torch.zeros(1, len(model.class_names)), score)
    if layer is not None:
        resolve_layer(model, layer)
    return {"target": target, "score": score, "window": window, "stride": stride, "fill": fill, "layer": layer,
            "edges": edges, "batch_size": batch_size}


def occlusion_on_ray(model: ImageClassifier, images: str | Path | Sequence[str | Path], out: str | Path, *,
                     target="predicted", score: str = "probability", window: int | None = None,
                     stride: int | None = None, fill: str | float = "mean", layer: str | None = None,
                     edges: str = "whole", rule: str | None = "auto", batch_size: int | None = None,
                     ray: str = "local", workers: int = 1, gpus_per_worker: float = 0.0,
                     cpus_per_worker: float | None = None, shard_size: int = 64, resume: bool = False,
                     progress: ProgressLike = False) -> OnRay:
    """``convlens occlusion --ray``: ``convlens.occlusion`` of every image of ``images`` (files or folders,
    searched recursively) on Ray workers, with the same options (``batch_size``: windows per forward pass);
    writes ``out`` (the in-process output of the first readable image, the job's summary, ``shards/`` with every
    image's maps) and returns the result."""
    from convlens.data.images import expand_image_args

    paths = expand_image_args([images] if isinstance(images, (str, Path)) else list(images))
    if not paths:
        raise ConvlensError("no images given")
    job = OcclusionJob(model, target=target, score=score, window=window, stride=stride, fill=fill, layer=layer,
                       edges=edges, rule=rule, batch_size=batch_size)
    options = RayOptions(ray, workers, gpus_per_worker, cpus_per_worker)
    return run_job(job, model, paths, out, options, batch_size=IMAGES_PER_TASK, shard_size=shard_size,
                   resume=resume, progress=progress)
