"""The generic Ray runner: Ray Data over the file list, one model actor per worker, shards on the driver.

``run_job(job, model, paths, out, options)``:

1. the model is packaged once (``transfer.package_model``) and every actor rebuilds it once, in ``__init__``
   of the callable class ``ModelWorker`` that ``map_batches`` runs (``concurrency=workers``, ``num_gpus=``
   ``gpus_per_worker``);
2. ``ray.data.from_items`` of the images not yet in a finished shard, one item per model batch (``first``
   index, ``paths``), streams through the actors; an actor decodes its batch (an unreadable file becomes a row
   with its ``error``, the rest of the batch goes on) and the job's adapter computes per-image columns
   (``job.process``);
3. the driver takes the rows as they stream back, draws the progress bar, and writes a shard's Parquet file as
   soon as all of its images are in (``job.reduce_shard`` may reshape it first);
4. ``job.finish`` builds the method's result from the shards.

Ray Data restarts an actor that dies and retries its batch (``max_restarts=-1``, ``max_task_retries=-1``, its
defaults for actor pools), so a killed actor costs time, not results; a driver that dies loses only the shards
not yet written, and ``resume=True`` computes just those.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from convlens.distributed.cluster import RayOptions, connect, disconnect, import_ray, quiet_ray_data
from convlens.distributed.shards import ShardPlan, ShardStore
from convlens.distributed.transfer import ModelPackage, package_model
from convlens.models.classifier import ImageClassifier
from convlens.output import check_out as check_replaceable
from convlens.output import write_manifest
from convlens.progress import ProgressLike, track


class Job(Protocol):
    """A method's adapter: what runs on the actors and how the driver finishes."""

    name: str  # the CLI command (``cam``, ``topk``)

    def describe(self) -> dict[str, Any]:
        """Everything that decides the numbers (method, layers, target, batch size...): resume checks it."""

    def process(self, model: ImageClassifier, inputs, indices: np.ndarray) -> dict[str, Any]:
        """On an actor: per-image columns for a batch of readable images (lists or arrays, one entry each).
        A job with ``wants_paths = True`` also gets ``paths=`` (the files of those images)."""

    def reduce_shard(self, table):
        """On the driver: a finished shard's rows (pyarrow, in image order) as they are to be stored."""

    def finish(self, model: ImageClassifier, run: RunRecord):
        """On the driver: the method's result from the finished shards."""


@dataclass
class RunRecord:
    """What the driver knows when the job is done; ``job.finish`` turns it into the result."""

    paths: list[Path]
    store: ShardStore
    errors: list[dict[str, str]]  # {"path", "error"} of every unreadable image, in image order
    ray: dict[str, Any] = field(default_factory=dict)  # how it ran, for summary.json
    compute_seconds: float = 0.0


class ModelWorker:
    """The callable class ``map_batches`` runs on each actor: loads the model once, then explains batches."""

    def __init__(self, package: ModelPackage, job: Job, device: str, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.model = package.load(device)
        self.job = job

    def __call__(self, batch: dict[str, np.ndarray]):
        """``batch``: rows of ``first`` (the index of the row's first image) and ``paths`` (one model batch)."""
        import pyarrow as pa

        tables = [self.explain(int(first), [str(p) for p in paths])
                  for first, paths in zip(batch["first"], batch["paths"], strict=True)]
        return pa.concat_tables(tables, promote_options="permissive")

    def explain(self, first: int, paths: list[str]):
        import pyarrow as pa
        import torch

        from convlens.data.images import load_image
        from convlens.errors import ConvlensError

        indices = np.arange(first, first + len(paths), dtype=np.int64)
        tensors, good, errors = [], [], [""] * len(paths)
        for row, path in enumerate(paths):
            try:
                tensors.append(self.model.preprocessing.to_tensor(load_image(path)))
                good.append(row)
            except ConvlensError as exc:
                errors[row] = str(exc)
        columns: dict[str, Any] = {}
        if good:
            inputs = torch.stack(tensors).to(self.model.device)
            # a job that needs the files (the pointing game reads the boxes of each file's name) asks for them
            files = {"paths": [paths[row] for row in good]} if getattr(self.job, "wants_paths", False) else {}
            columns = self.job.process(self.model, inputs, indices[good], **files)
        table = {"index": pa.array(indices), "path": pa.array(paths), "error": pa.array(errors),
                 "worker_peak_mb": pa.array([peak_memory_mb()] * len(paths), type=pa.float32())}
        for name, values in columns.items():
            table[name] = spread(values, good, len(paths))
            first_value = values[0] if len(values) else None
            if isinstance(first_value, np.ndarray) and first_value.ndim > 0:  # the shape beside each flat array
                table[f"{name}.shape"] = spread([np.asarray(v.shape, dtype=np.int64) for v in values], good,
                                                len(paths))
        return pa.table(table)


def peak_memory_mb() -> float:
    """This process's peak resident memory so far (the actor's: model, batch, method)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def spread(values, rows: list[int], count: int):
    """A pyarrow column of ``count`` entries: ``values`` at ``rows``, null elsewhere (the unreadable images).
    Arrays per image become lists (flattened; the adapter records shapes)."""
    import pyarrow as pa

    full: list[Any] = [None] * count
    for row, value in zip(rows, values, strict=True):
        full[row] = value.reshape(-1) if isinstance(value, np.ndarray) and value.ndim > 0 else value
    return pa.array(full)


def run_job(job: Job, model: ImageClassifier, paths: Sequence[str | Path], out: str | Path,
            options: RayOptions, *, batch_size: int = 16, shard_size: int = 256, resume: bool = False,
            progress: ProgressLike = False):
    """Run ``job`` over ``paths`` on Ray (see the module doc) and write ``out``: shards go to ``OUT.partial``
    as they finish; at the end the result of ``job.finish`` is saved to ``out`` and the shards move into
    ``out/shards``. Returns the result."""
    check_replaceable(Path(out))  # a user's folder at --out fails now, not after the whole job
    run = run_shards(job, model, paths, out, options, batch_size=batch_size, shard_size=shard_size, resume=resume,
                     progress=progress)
    result = job.finish(model, run)
    result.save(out)
    run.store.move_into(Path(out))
    write_manifest(Path(out), result.command or job.name)  # the shards moved in are convlens's too
    return result


def run_shards(job: Job, model: ImageClassifier, paths: Sequence[str | Path], out: str | Path,
               options: RayOptions, *, batch_size: int = 16, shard_size: int = 256, resume: bool = False,
               progress: ProgressLike = False) -> RunRecord:
    """The part of ``run_job`` before the result: every shard written to ``OUT.partial``; returns the record
    (a caller that keeps no output folder, such as the report's pass, reads the shards and removes them)."""
    paths = [Path(p) for p in paths]
    # Shards hold whole batches, and batches start where the in-process run's start: every image then meets the
    # same batch neighbours as in-process, so even the last bits of the numbers agree.
    plan = ShardPlan(len(paths), batch_size * max(1, -(-shard_size // batch_size)))
    store = ShardStore(out, {"command": job.name, **job.describe(), "model": model_key(model),
                             "paths": [str(p) for p in paths], "batch_size": batch_size}, plan, resume)
    done_before = store.done()
    pending = [i for s in range(plan.shards) if s not in done_before for i in plan.images_in(s)]
    started = connect(options)
    start = time.perf_counter()
    try:
        quiet_ray_data()
        cpus = options.worker_cpus()
        if pending:
            _stream(job, model, paths, pending, store, plan, options, cpus, batch_size, done_before, progress)
        seconds = time.perf_counter() - start
    finally:
        disconnect(started)
    errors, peak = collect_errors(store, plan)
    run = RunRecord(paths, store, errors, compute_seconds=seconds, ray={
        "address": options.address, "workers": options.workers, "gpus_per_worker": options.gpus_per_worker,
        "cpus_per_worker": cpus, "shards": plan.shards, "shard_size": plan.shard_size,
        "shards_done_before": len(done_before), "images_computed": len(pending), "batch_size": batch_size,
        "images_per_second": round(len(pending) / seconds, 3) if pending and seconds > 0 else None,
        "worker_peak_memory_mb": round(peak, 1)})
    return run


def _stream(job: Job, model: ImageClassifier, paths: list[Path], pending: list[int], store: ShardStore,
            plan: ShardPlan, options: RayOptions, cpus: float, batch_size: int, done_before: set[int],
            progress: ProgressLike) -> None:
    """Stream ``pending`` through ``options.workers`` actors of ``cpus`` cores each, writing shards as they fill."""
    ray = import_ray()
    package = package_model(model)
    device = "cuda" if options.gpus_per_worker > 0 else "cpu"
    # One item per model batch (``batch_size`` consecutive images); Ray Data hands an actor one item per call.
    items = [{"first": pending[start], "paths": [str(paths[i]) for i in pending[start:start + batch_size]]}
             for start in range(0, len(pending), batch_size)]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 8 * options.workers)))
    results = dataset.map_batches(
        ModelWorker, fn_constructor_args=(package, job, device, int(cpus)),
        batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=options.workers),
        num_gpus=options.gpus_per_worker or None, num_cpus=cpus)
    skipped = f" ({len(done_before)} of {plan.shards} shards done before)" if done_before else ""
    waiting: dict[int, dict[int, Any]] = {}  # shard -> image index -> one-row table
    for _ in track(_images_done(results, plan, store, job, waiting), len(pending),
                   f"{job.name} on Ray, {options.workers} worker(s){skipped}", progress):
        pass


def _images_done(results, plan: ShardPlan, store: ShardStore, job: Job, waiting: dict) -> Iterator[int]:
    """Take result blocks as they stream back; write each shard once all its images are in; yield once per
    image (for the progress bar)."""
    import pyarrow as pa

    for block in results.iter_batches(batch_size=None, batch_format="pyarrow"):
        indices = block.column("index").to_pylist()
        for row, index in enumerate(indices):
            shard = plan.shard_of(index)
            waiting.setdefault(shard, {})[index] = block.slice(row, 1)  # a retried batch overwrites, never adds
            if len(waiting[shard]) == len(plan.images_in(shard)):
                rows = waiting.pop(shard)
                table = pa.concat_tables([rows[i] for i in sorted(rows)], promote_options="permissive")
                store.write(shard, job.reduce_shard(table))
            yield index


def collect_errors(store: ShardStore, plan: ShardPlan) -> tuple[list[dict[str, str]], float]:
    """Every unreadable image (path and reason) in image order, and the largest worker peak memory (MB)."""
    import pyarrow.parquet as pq

    errors, peak = [], 0.0
    for shard in range(plan.shards):
        table = pq.read_table(store.path(shard), columns=["path", "error", "worker_peak_mb"]).to_pylist()
        errors += [{"path": row["path"], "error": row["error"]} for row in table if row["error"]]
        peak = max([peak] + [row["worker_peak_mb"] or 0.0 for row in table])
    return errors, peak


def model_key(model: ImageClassifier) -> str:
    """A fingerprint of the weights and preprocessing (resume must not mix two models' shards)."""
    import hashlib

    digest = hashlib.sha256(model.spec.encode())
    digest.update(repr(model.preprocessing.to_dict()).encode())
    for name, tensor in sorted(model.module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes()[:4096])
        digest.update(str(float(tensor.detach().float().sum())).encode())
    return digest.hexdigest()[:16]
