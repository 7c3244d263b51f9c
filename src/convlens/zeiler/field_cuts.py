"""Single-activation projections for the top-k and evolution figures, each run on the image cut down to the
activation's receptive field (cheaper than the whole image, and the same projection), and the crops of
patches and projections to the field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch

from convlens.errors import ConvlensError
from convlens.models.classifier import ImageClassifier
from convlens.progress import ProgressLike, track
from convlens.zeiler.deconv import project_and_measure
from convlens.zeiler.receptive_field import ReceptiveField

if TYPE_CHECKING:
    from convlens.zeiler.topk import TopKTable


@dataclass(frozen=True)
class Projection:
    """One single-activation projection to compute: slot ``slot`` of the entries, from image row ``row``."""

    slot: int
    row: int
    unit: int
    position: tuple[int, int]
    value: float  # the activation the scan found there


Window = tuple[int, int, int, int]  # (top, left, bottom, right) of a cut in the image


@dataclass(frozen=True)
class ProjectionChunk:
    """One batch of projections: ``jobs`` from their cuts ``windows`` (one per job), or from whole images when
    ``windows`` is None. A chunk is the unit of work that ``project_chunk`` runs (here, or on a Ray actor)."""

    jobs: tuple[Projection, ...]
    windows: tuple[Window, ...] | None = None


@dataclass(frozen=True)
class ChunkOutcome:
    """What ``project_chunk`` returns: per projected job its ``slot``, its window (None: the whole image) and
    the projection over that window; ``missed``: the jobs whose cut did not reproduce the scanned activation."""

    done: tuple[tuple[int, Window | None, torch.Tensor], ...]
    missed: tuple[Projection, ...] = ()


@dataclass(frozen=True)
class LayerOf:
    """What a chunk needs to know about the scanned layer (a ``TopKTable`` has these fields too)."""

    layer: str
    layer_calls: int
    map_size: tuple[int, int]


# Runs chunks and yields their outcomes in order: ``runner(inputs, chunks, layer, rule)``; the default runs them
# here (``project_chunks_here``), ``convlens.distributed`` runs them on Ray actors.
ChunkRunner = Callable[[torch.Tensor, Sequence[ProjectionChunk], LayerOf, str], Iterator[ChunkOutcome]]


def project_entries(model: ImageClassifier, inputs: torch.Tensor, jobs: list[Projection], top: TopKTable,
                    rule: str, rf: ReceptiveField | None, batch_size: int, progress: ProgressLike,
                    runner: ChunkRunner | None = None) -> torch.Tensor:
    """Full-size projections of every job's single activation.

    Nothing outside an activation's receptive field reaches it, so its forward pass and its projection can run
    on the image cut down to the field: the cut starts on a multiple of the layer's stride, so every layer
    sees the same grid, and the layer's own zero padding only touches positions outside the field. Layers that
    also see the whole image (squeeze-excitation gates on the way) get whole images. The activation in the cut
    image is checked against the value the scan found; where they differ (padding the cut differently from the
    whole image, say), the whole image is used instead.

    The work is cut into chunks (``projection_chunks``: the cut chunks, then the whole-image ones) that
    ``runner`` computes, here by default; the chunks do not depend on the runner, so neither do the numbers.
    """
    runner = runner or partial(project_chunks_here, model)
    layer = LayerOf(top.layer, top.layer_calls, tuple(top.map_size))
    projections = torch.zeros(len(jobs), *inputs.shape[1:])
    cuts, whole = projection_chunks(jobs, rf, layer.map_size, tuple(inputs.shape[-2:]), batch_size)
    outcomes = track(runner(inputs, cuts, layer, rule), len(cuts), "projecting", progress) if cuts else ()
    for outcome in outcomes:
        _place(projections, outcome)
        whole += outcome.missed
    wholes = [ProjectionChunk(tuple(whole[start:start + batch_size])) for start in range(0, len(whole), batch_size)]
    for outcome in runner(inputs, wholes, layer, rule) if wholes else ():
        _place(projections, outcome)
    return projections


def projection_chunks(jobs: list[Projection], rf: ReceptiveField | None, map_size: tuple[int, int],
                      input_size: tuple[int, int], batch_size: int) -> tuple[list[ProjectionChunk], list[Projection]]:
    """The chunks of projections from cut images (``batch_size`` whole images' worth of pixels each), and the
    jobs to project from whole images (the layer sees the whole image, or no cut fits the stride grid)."""
    height, width = input_size
    cut = rf is not None and not rf.global_context
    windows = _field_windows(jobs, rf, map_size, (height, width)) if cut else {}
    groups: dict[tuple[int, int], list[Projection]] = {}
    for job in jobs:
        window = windows.get(job.slot)
        shape = (window[2] - window[0], window[3] - window[1]) if window else (height, width)
        groups.setdefault(shape, []).append(job)
    chunks, whole = [], []
    for shape, members in groups.items():
        if shape == (height, width):
            whole += members
            continue
        # batch_size counts whole images: cuts of a quarter of the area go four times as many at once
        per_batch = max(1, batch_size * height * width // (shape[0] * shape[1]))
        chunks += [ProjectionChunk(tuple(members[start:start + per_batch]),
                                   tuple(windows[job.slot] for job in members[start:start + per_batch]))
                   for start in range(0, len(members), per_batch)]
    return chunks, whole


def project_chunks_here(model: ImageClassifier, inputs: torch.Tensor, chunks: Sequence[ProjectionChunk],
                        layer: LayerOf, rule: str) -> Iterator[ChunkOutcome]:
    """The default ``ChunkRunner``: every chunk in this process, in order."""
    for chunk in chunks:
        yield project_chunk(model, inputs, chunk, layer, rule)


def project_chunk(model: ImageClassifier, inputs: torch.Tensor, chunk: ProjectionChunk, layer: LayerOf,
                  rule: str) -> ChunkOutcome:
    """One chunk's projections (``inputs``: the images its jobs' ``row`` index)."""
    jobs = list(chunk.jobs)
    if chunk.windows is None:
        projected = project_and_measure(model, inputs[[job.row for job in jobs]], layer.layer,
                                        [job.unit for job in jobs], [job.position for job in jobs], rule,
                                        layer_calls=layer.layer_calls)[0]
        return ChunkOutcome(tuple((job.slot, None, projected[n]) for n, job in enumerate(jobs)))
    done: list[tuple[int, Window | None, torch.Tensor]] = []
    missed = _project_cut(model, inputs, jobs, list(chunk.windows), layer, rule, done)
    return ChunkOutcome(tuple(done), tuple(missed))


def _place(projections: torch.Tensor, outcome: ChunkOutcome) -> None:
    for slot, window, projection in outcome.done:
        if window is None:
            projections[slot] = projection
        else:
            top, left, bottom, right = window
            projections[slot, :, top:bottom, left:right] = projection


def _field_windows(jobs: list[Projection], rf: ReceptiveField, map_size: tuple[int, int],
                   input_size: tuple[int, int]) -> dict[int, tuple[int, int, int, int]]:
    """Per job, ``(top, left, bottom, right)`` of a cut holding its field and starting on the stride grid; all
    cuts as large as the largest (moved back inside at the image border) so that they share one shape. Empty
    when the layer's stride is not a whole number of pixels."""
    strides = _whole_strides(input_size, map_size)
    if strides is None:
        return {}
    starts, extents = {}, [0, 0]
    for job in jobs:
        box = rf.box(*job.position)
        start = (box[0] - box[0] % strides[0], box[1] - box[1] % strides[1])
        starts[job.slot] = start
        extents = [max(extents[0], box[2] - start[0]), max(extents[1], box[3] - start[1])]
    # Rounded up so that image size - cut size is a multiple of the stride: layers whose padding depends on the
    # input size (TensorFlow "same") then pad the cut as they pad the whole image.
    extents = [size - stride * ((size - extent) // stride)
               for size, extent, stride in zip(input_size, extents, strides, strict=True)]
    windows = {}
    for slot, start in starts.items():
        spans = [_span(start[axis], extents[axis], input_size[axis], strides[axis]) for axis in (0, 1)]
        windows[slot] = (spans[0][0], spans[1][0], spans[0][1], spans[1][1])
    return windows


def _whole_strides(input_size: tuple[int, int], map_size: tuple[int, int]) -> tuple[int, int] | None:
    """Input pixels per position of the layer's map, along rows and columns; None unless both are whole."""
    if any(size % out for size, out in zip(input_size, map_size, strict=True)):
        return None
    return input_size[0] // map_size[0], input_size[1] // map_size[1]


def _span(start: int, extent: int, size: int, stride: int) -> tuple[int, int]:
    """``[start, start + extent)`` within ``[0, size)``: past the far border, moved back onto the border (a
    multiple of ``stride`` away, so still on the grid)."""
    if start + extent <= size:
        return start, start + extent
    if extent <= size and (size - extent) % stride == 0:
        return size - extent, size
    return start, size


def _project_cut(model: ImageClassifier, inputs: torch.Tensor, jobs: list[Projection], windows: list[Window],
                 layer: LayerOf, rule: str, done: list) -> list[Projection]:
    """Project ``jobs`` from their cut images into ``done`` (slot, window, projection); returns the jobs whose
    cut did not reproduce the scanned activation (to be projected from the whole image)."""
    strides = _whole_strides(tuple(inputs.shape[-2:]), layer.map_size)
    cuts = torch.stack([inputs[job.row, :, t:b, left:r] for job, (t, left, b, r) in zip(jobs, windows, strict=True)])
    positions = [(job.position[0] - t // strides[0], job.position[1] - left // strides[1])
                 for job, (t, left, _, _) in zip(jobs, windows, strict=True)]
    try:
        cut_projections, fed = project_and_measure(model, cuts, layer.layer, [job.unit for job in jobs], positions,
                                                   rule, layer_calls=layer.layer_calls)
    except (RuntimeError, ValueError, IndexError, ConvlensError):  # the cut is too small for some layer
        return list(jobs)
    expected = torch.tensor([job.value for job in jobs], dtype=torch.float32)
    scale = float(expected.abs().max()) if len(expected) else 0.0
    same = torch.isclose(fed, expected, rtol=1e-4, atol=1e-5 * scale + 1e-12)
    missed = []
    for n, (job, window) in enumerate(zip(jobs, windows, strict=True)):
        if same[n]:
            done.append((job.slot, window, cut_projections[n].clone()))  # a clone: not a view of the whole batch
        else:
            missed.append(job)
    return missed


def pad_crop(crop: np.ndarray, box: tuple[int, int, int, int], rf: ReceptiveField, channels_last: bool,
             fill: float) -> np.ndarray:
    """A crop clipped by the image border, padded to the field's full size on the side that was clipped."""
    height, width = rf.size
    rows, cols = box[2] - box[0], box[3] - box[1]
    top = height - rows if box[0] == 0 else 0  # clipped at the top: the missing rows lie above
    left = width - cols if box[1] == 0 else 0
    shape = (height, width, crop.shape[2]) if channels_last else (crop.shape[0], height, width)
    padded = np.full(shape, fill, dtype=np.float32)
    if channels_last:
        padded[top:top + rows, left:left + cols] = crop
    else:
        padded[:, top:top + rows, left:left + cols] = crop
    return padded
