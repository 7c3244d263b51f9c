"""The report's shared pass on Ray (``convlens report --ray``): the same ``Scan`` as ``scan.shared_pass``.

Each actor runs the pass's forward on its batches (the batches start where the in-process pass's start, so the
activations agree to the last bit) and returns per image and layer: every unit's strongest activation and its
position (the top-k rows of ``distributed.topk``), its mean activation and the strongest channels' uint8 tiles,
plus the class probabilities; each batch's activation histogram rides on its first row. The driver folds the
top-k rows shard after shard with ``distributed.topk.fold_shards`` (the in-process table's order), stacks the
rest in image order and sums the histograms. The histogram's bin edges come from the first batch, as
in-process: the driver runs the in-process pass on that one batch first (which also counts how often each layer
runs per forward).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlens.distributed.cluster import RayOptions
from convlens.distributed.result import column_arrays
from convlens.distributed.runner import run_shards
from convlens.distributed.topk import fold_shards
from convlens.errors import ConvlensError
from convlens.models.classifier import ImageClassifier
from convlens.progress import ProgressLike
from convlens.report.scan import LayerScan, Scan, _LayerAccumulator, shared_pass
from convlens.zeiler.topk import KEPT_INPUT_BYTES, TopKTable, image_batches


class ReportScanJob:
    name = "report-scan"

    def __init__(self, layers: Sequence[str], k: int, edges: dict[str, np.ndarray]) -> None:
        self.layers, self.k, self.edges = list(layers), k, edges

    def describe(self) -> dict[str, Any]:
        return {"layers": self.layers, "k": self.k}

    def process(self, model: ImageClassifier, inputs, indices: np.ndarray) -> dict[str, Any]:
        from convlens.hooks import capture

        with capture(model, self.layers) as seen, torch.inference_mode():
            output = model.module(inputs)
        columns: dict[str, Any] = {"probabilities": list(torch.softmax(output.float(), dim=1).cpu().numpy())}
        for name in self.layers:
            columns.update(self.layer_columns(name, seen[name]))
        return columns

    def layer_columns(self, name: str, output: torch.Tensor) -> dict[str, list]:
        """The per-image statistics of one layer, computed by the in-process pass's own accumulator."""
        accumulator = _LayerAccumulator(name, self.k)
        output = output.float()
        flat = output.flatten(2)
        values, positions = flat.max(dim=2)
        means = flat.mean(dim=2)
        accumulator._tiles(output, means)
        accumulator.edges = torch.from_numpy(self.edges[name])
        accumulator.counts = torch.zeros(flat.shape[1] * (len(accumulator.edges) - 1), dtype=torch.long)
        accumulator._histogram(flat)
        # the batch's histogram rides on its first image's row (the others hold none): the driver sums them,
        # integers in any order; one per image would weigh channels x bins x 8 bytes per image
        histograms = [accumulator.counts.view(flat.shape[1], -1).numpy()]
        histograms += [np.zeros(0, dtype=np.int64)] * (len(flat) - 1)
        return {f"values/{name}": list(values.cpu().numpy()), f"positions/{name}": list(positions.cpu().numpy()),
                f"means/{name}": list(means.cpu().numpy()), f"histogram/{name}": histograms,
                f"tiles/{name}": list(accumulator.tiles[0].numpy()),
                f"ranges/{name}": list(accumulator.ranges[0].numpy()),
                f"channels/{name}": list(accumulator.channels_shown[0].numpy())}

    def reduce_shard(self, table):
        return table


def scan_on_ray(model: ImageClassifier, paths: Sequence[Path], layers: Sequence[str], k: int, batch_size: int,
                options: RayOptions, progress: ProgressLike = False) -> Scan:
    """``shared_pass`` with the forward of every batch on Ray workers; returns the same ``Scan``."""
    import time

    import pyarrow as pa

    start = time.perf_counter()
    paths = list(paths)
    first = shared_pass(model, paths[:batch_size], layers, k, batch_size)  # edges and layer calls, as in-process
    job = ReportScanJob(layers, k, {name: layer.histogram_edges for name, layer in first.layers.items()})
    with tempfile.TemporaryDirectory(prefix="convlens-report-scan-") as work:
        run = run_shards(job, model, paths, Path(work) / "scan", options, batch_size=batch_size,
                         shard_size=max(256, batch_size), progress=progress)
        if run.errors:
            raise ConvlensError(run.errors[0]["error"])  # as the in-process pass: the report needs every image
        shards = [run.store.read(s) for s in range(run.store.plan.shards)]
    table = pa.concat_tables(shards, promote_options="permissive")
    inputs = kept_inputs(model, paths, batch_size)
    kept = {i: inputs[i] for i in range(len(paths))} if inputs is not None else {}
    scan = Scan(paths, torch.from_numpy(column_arrays(table, ["probabilities"])["probabilities"]), inputs)
    for name, head in first.layers.items():
        empty = TopKTable.empty(name, range(head.channels), k, head.map_size, head.channels, head.calls,
                                keep_inputs=False)
        top = fold_shards(empty, shards, f"values/{name}", f"positions/{name}")
        kinds = ["means", "values", "tiles", "ranges", "channels"]
        arrays = column_arrays(table, [f"{kind}/{name}" for kind in kinds])
        scan.layers[name] = LayerScan(
            name, head.channels, head.map_size, head.calls, arrays[f"means/{name}"], arrays[f"values/{name}"],
            replace(top, inputs=kept), paths, head.histogram_edges,
            summed_histograms(table, f"histogram/{name}"), arrays[f"channels/{name}"],
            arrays[f"tiles/{name}"], arrays[f"ranges/{name}"])
    scan.seconds = time.perf_counter() - start
    return scan


def summed_histograms(table, name: str) -> np.ndarray:
    """The sum of the batches' histograms (``channels x bins``, int64), each on its batch's first row."""
    total = None
    for flat, shape in zip(table.column(name).to_pylist(), table.column(f"{name}.shape").to_pylist(), strict=True):
        if flat:
            counts = np.asarray(flat, dtype=np.int64).reshape(shape)
            total = counts if total is None else total + counts
    return total


def kept_inputs(model: ImageClassifier, paths: list[Path], batch_size: int) -> torch.Tensor | None:
    """The preprocessed inputs, when the in-process pass would keep them (they fit in ``KEPT_INPUT_BYTES``)."""
    if len(paths) * 3 * model.input_size[0] * model.input_size[1] * 4 > KEPT_INPUT_BYTES:
        return None
    return torch.cat([inputs for inputs, _, _ in image_batches(paths, model.preprocessing, batch_size)])


__all__ = ["ReportScanJob", "scan_on_ray"]
