"""The projections of the top-k winners on Ray actors: ``zeiler.topk_result`` with a ``ChunkRunner`` that sends
its chunks to model actors instead of running them in this process.

``zeiler.field_cuts.projection_chunks`` cuts the ``units x k`` single-activation projections into batches (the
cuts of one shape, ``projection_batch_size`` whole images' worth of pixels each; then the whole-image ones).
The chunks are the same whoever runs them, so each chunk is computed by the same ``project_chunk`` on the same
batch as in-process and the projections agree bit for bit. ``RayProjections`` starts up to ``workers`` actors
(``ProjectionWorker``: the model loaded once, as the scan's ``ModelWorker``), hands them chunks as they free up
(``ray.util.ActorPool``, results in chunk order) and kills them when the result is built. Each chunk travels
with the preprocessed images it needs only (decoded once on the driver, which keeps them for the result's
patches and ``input``), and comes back as the projections over each job's cut window. An actor that dies is
restarted and its chunk retried (``max_restarts=-1``, ``max_task_retries=-1``), as in the scan.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from convlens.distributed.cluster import RayOptions, import_ray
from convlens.distributed.runner import peak_memory_mb
from convlens.distributed.transfer import package_model
from convlens.models.classifier import ImageClassifier
from convlens.zeiler.field_cuts import ChunkOutcome, LayerOf, ProjectionChunk, project_chunk


class ProjectionWorker:
    """A Ray actor: the model loaded once, then one chunk of projections per call."""

    def __init__(self, package, device: str, threads: int) -> None:
        torch.set_num_threads(max(1, threads))
        self.model = package.load(device)

    def project(self, inputs: torch.Tensor, chunk: ProjectionChunk, layer: LayerOf, rule: str) -> ChunkOutcome:
        return project_chunk(self.model, inputs, chunk, layer, rule)

    def peak_memory_mb(self) -> float:
        return peak_memory_mb()


class RayProjections:
    """A ``field_cuts.ChunkRunner`` on Ray actors (see the module doc); ``close()`` ends the actors and
    ``describe()`` says how it ran (for summary.json). Needs Ray connected while in use."""

    def __init__(self, model: ImageClassifier, options: RayOptions) -> None:
        self.model, self.options = model, options
        self.actors: list[Any] = []
        self.package = None
        self.chunks, self.projections, self.seconds, self.peak = 0, 0, 0.0, 0.0

    def __call__(self, inputs: torch.Tensor, chunks: Sequence[ProjectionChunk], layer: LayerOf,
                 rule: str) -> Iterator[ChunkOutcome]:
        ray = import_ray()
        start = time.perf_counter()
        self.start(min(self.options.workers, len(chunks)))
        pool = ray.util.ActorPool(self.actors)
        work = (_with_own_rows(inputs, chunk) for chunk in chunks)
        outcomes = pool.map(lambda actor, item: actor.project.remote(item[0], item[1], layer, rule), work)
        for chunk, outcome in zip(chunks, outcomes, strict=True):
            self.chunks += 1
            self.projections += len(outcome.done)  # a cut that missed is projected again, from the whole image
            # the missed jobs come back with the rows of the actor's batch: the driver's own jobs go on
            original = {job.slot: job for job in chunk.jobs}
            yield dataclasses.replace(outcome, missed=tuple(original[job.slot] for job in outcome.missed))
        self.seconds += time.perf_counter() - start

    def start(self, count: int) -> None:
        """At least ``count`` actors running (each loads the model once)."""
        ray = import_ray()
        if len(self.actors) >= count:
            return
        if self.package is None:
            self.package = package_model(self.model)
        device = "cuda" if self.options.gpus_per_worker > 0 else "cpu"
        cpus = self.options.worker_cpus()
        remote = ray.remote(ProjectionWorker).options(
            num_cpus=cpus, num_gpus=self.options.gpus_per_worker or None,
            max_restarts=-1, max_task_retries=-1)
        self.actors += [remote.remote(self.package, device, int(cpus))
                        for _ in range(count - len(self.actors))]

    def close(self) -> None:
        """End the actors (their peak memory read first)."""
        if not self.actors:
            return
        ray = import_ray()
        try:
            self.peak = max(ray.get([actor.peak_memory_mb.remote() for actor in self.actors]))
        finally:
            for actor in self.actors:
                ray.kill(actor)

    def describe(self) -> dict[str, Any]:
        return {"actors": len(self.actors), "chunks": self.chunks, "projections": self.projections,
                "seconds": round(self.seconds, 3), "worker_peak_memory_mb": round(self.peak, 1)}


def _with_own_rows(inputs: torch.Tensor, chunk: ProjectionChunk) -> tuple[torch.Tensor, ProjectionChunk]:
    """The images ``chunk`` reads and the chunk with its jobs' rows renumbered into them: an actor receives
    one batch's images, not every winner's."""
    rows = sorted({job.row for job in chunk.jobs})
    new_row = {row: n for n, row in enumerate(rows)}
    jobs = tuple(dataclasses.replace(job, row=new_row[job.row]) for job in chunk.jobs)
    return inputs[rows].contiguous(), dataclasses.replace(chunk, jobs=jobs)
