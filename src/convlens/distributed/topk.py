"""Top-k mining on Ray, exact: the same table as the in-process ``convlens topk``, values, images, positions.

Each actor runs the scan's forward pass (``zeiler.deconv.layer_outputs`` / ``run_forward``, stopping after the
layer, under ``inference_mode``) on its batches and returns, per image, every chosen unit's strongest activation
and its position: the shard rows (``values``, ``positions``: one entry per unit). The driver folds the shards into
one ``zeiler.TopKTable`` with ``TopKTable.add``, whose order (value, ties by image index) is the local scan's,
so the merged table is exactly the local one whatever the sharding. ``zeiler.topk_result`` then adds the
patches and projections of the ``units x k`` winners, the projections computed on Ray actors too
(``distributed.projections``: the in-process chunks of projections, each on an actor, so they agree bit for
bit); the driver decodes the winners' images and cuts the patches.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlens.distributed.cluster import RayOptions, connect, disconnect
from convlens.distributed.result import OnRay
from convlens.distributed.runner import RunRecord, run_job
from convlens.hooks import preserved_state
from convlens.models.classifier import ImageClassifier
from convlens.output import check_out
from convlens.progress import ProgressLike

# From this many projections (units x k) on, ``topk_on_ray`` projects on Ray actors by default. Measured on the
# 2-core development machine (baseline CNN, 32 px): 144 projections took under 1 s on the driver and 7-14 s on
# freshly started actors (actor start and model load); a ResNet50 layer4's 2,048 units x 9 are minutes of work.
RAY_PROJECTIONS_FROM = 1024


class TopKJob:
    name = "topk"

    def __init__(self, model: ImageClassifier, layer: str, units, k: int, rule: str, projection_batch_size: int,
                 scan_batch_size: int, source: str | None, options: RayOptions | None = None,
                 projections_on_ray: bool | None = None) -> None:
        from convlens.zeiler import TopKTable, parse_units

        if k < 1:
            from convlens.errors import ConvlensError

            raise ConvlensError(f"--k must be at least 1, got {k}")
        calls, output = _probe(model, layer)
        self.layer, self.k, self.rule, self.calls = layer, k, rule, calls
        self.units = parse_units(units, output.shape[1])
        self.empty = TopKTable.empty(layer, self.units, k, (output.shape[2], output.shape[3]), output.shape[1],
                                     calls, keep_inputs=False)
        self.projection_batch_size, self.scan_batch_size, self.source = projection_batch_size, scan_batch_size, source
        self.options = options or RayOptions()  # where the projections run (the scan's workers, started anew)
        self.projections_on_ray = (len(self.units) * k >= RAY_PROJECTIONS_FROM if projections_on_ray is None
                                   else projections_on_ray)

    def describe(self) -> dict[str, Any]:
        return {"layer": self.layer, "units": self.units}

    def process(self, model: ImageClassifier, inputs, indices: np.ndarray) -> dict[str, Any]:
        from convlens.zeiler.deconv import layer_outputs, run_forward

        with preserved_state(model.module) as net, torch.inference_mode():
            with layer_outputs(net, self.layer, calls=self.calls) as record:
                output = run_forward(net, inputs, record, self.layer)
            unit_index = torch.tensor(self.units, device=output.device)
            values, flat = output.index_select(1, unit_index).flatten(2).max(dim=2)
        return {"values": list(values.float().cpu().numpy()), "positions": list(flat.cpu().numpy())}

    def reduce_shard(self, table):
        return table

    def finish(self, model: ImageClassifier, run: RunRecord) -> OnRay:
        import pyarrow.parquet as pq

        from convlens.distributed.projections import RayProjections
        from convlens.zeiler import topk_result

        shards = (pq.read_table(run.store.path(s), columns=["index", "error", "values", "positions"])
                  for s in range(run.store.plan.shards))
        table = fold_shards(self.empty, shards)
        start = time.perf_counter()
        projector = RayProjections(model, self.options) if self.projections_on_ray else None
        try:
            result = topk_result(model, run.paths, table, rule=self.rule, batch_size=self.projection_batch_size,
                                 scan_batch_size=self.scan_batch_size, source=self.source, runner=projector)
        finally:
            if projector is not None:
                projector.close()
        ran = ({"on": "ray", **projector.describe()} if projector is not None else
               {"on": "driver", "projections": len(self.units) * self.empty.k})
        return OnRay(result, {**run.ray, "projections": ran}, run.errors,
                     run.compute_seconds + time.perf_counter() - start,
                     {"images_scanned": len(run.paths) - len(run.errors)})


def fold_shards(table, shards, values: str = "values", positions: str = "positions"):
    """Fold every shard's per-image unit maxima (columns ``values`` and ``positions``, one entry per unit) into
    the ``TopKTable`` ``table``, shard after shard; ``TopKTable.add`` keeps the local scan's order (value, ties
    by image index), so the result is the in-process table whatever the sharding. Unreadable rows are skipped."""
    import pyarrow.compute as pc

    for rows in shards:
        rows = rows.filter(pc.equal(rows.column("error"), ""))
        if len(rows) == 0:
            continue
        maxima = np.stack(rows.column(values).to_numpy(zero_copy_only=False)).astype(np.float32)
        where = np.stack(rows.column(positions).to_numpy(zero_copy_only=False)).astype(np.int64)
        table = table.add(torch.from_numpy(maxima), torch.tensor(rows.column("index").to_pylist()),
                          torch.from_numpy(where))
    return table


def _probe(model: ImageClassifier, layer: str):
    """How many times ``layer`` runs per forward pass and its output for one blank input (its shape)."""
    from convlens.zeiler.deconv import layer_outputs, run_forward

    blank = torch.zeros(1, 3, *model.input_size, device=model.device)
    with preserved_state(model.module) as net, torch.inference_mode():
        with layer_outputs(net, layer) as record:
            output = run_forward(net, blank, record, layer)
    if output.dim() != 4:
        from convlens.errors import ConvlensError

        raise ConvlensError(f"layer {layer!r} has output shape {tuple(output.shape[1:])}: choose a layer with "
                            "spatial maps (channels x height x width)")
    return record["calls"], output


def topk_on_ray(model: ImageClassifier, images: str | Path | Sequence[str | Path], layer: str, out: str | Path, *,
                units="0:16", k: int = 9, rule: str = "auto", batch_size: int = 32, projection_batch_size: int = 16,
                ray: str = "local", workers: int = 1, gpus_per_worker: float = 0.0,
                cpus_per_worker: float | None = None, shard_size: int = 256, resume: bool = False,
                progress: ProgressLike = False, projections_on_ray: bool | None = None) -> OnRay:
    """``convlens topk --ray``: the scan of ``top_activations`` on Ray workers, merged exactly, then the
    projections of the winners; writes ``out`` (the topk output folder, plus ``shards/`` with every image's
    per-unit maxima) and returns the result (``summary()["ray"]["projections"]``: where and how the projections
    ran). ``projections_on_ray``: True on Ray actors, False on the driver, None (default) on Ray from
    ``RAY_PROJECTIONS_FROM`` projections (``units x k``) on: below that, starting the actors (each loads the
    model) costs more than the projections themselves."""
    from convlens.zeiler.topk import image_paths

    paths = image_paths(images)
    options = RayOptions(ray, workers, gpus_per_worker, cpus_per_worker)
    job = TopKJob(model, layer, units, k, rule, projection_batch_size, batch_size,
                  str(images) if isinstance(images, (str, Path)) else None, options, projections_on_ray)
    check_out(Path(out))  # a user's folder at --out fails now, before Ray starts
    started = connect(options)  # one connection for the scan and the projections
    try:
        return run_job(job, model, paths, out, options, batch_size=batch_size, shard_size=shard_size,
                       resume=resume, progress=progress)
    finally:
        disconnect(started)
