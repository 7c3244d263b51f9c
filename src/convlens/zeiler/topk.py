"""Each unit's strongest activations across an image folder, with their patches and deconv projections.

Zeiler & Fergus's Fig. 2: for every unit of a layer, the k images (9 in the paper) where it fires hardest, the
image patch under its receptive field at that spot, and the deconvnet projection of that single activation
cropped to the same field.

The scan is one streaming, batched pass (a ``DataLoader`` over the files): memory is one batch plus a running
``units x k`` table (``TopKTable``), whatever the folder's size. Each image counts once per unit, with its
strongest position. The table is ordered by value, ties by image index (the earlier file, paths sorted), and
``TopKTable.merge`` uses the same order: tables scanned over shards of a folder (``scan_top(...,
first_index=...)``, on other processes or machines) merge into exactly the table of one scan.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from convlens.data.images import list_images, load_image
from convlens.errors import ConvlensError
from convlens.hooks import module_device, preserved_state
from convlens.models.classifier import ImageClassifier, as_module
from convlens.models.preprocessing import Preprocessing
from convlens.progress import ProgressLike, track
from convlens.zeiler.deconv import (
    AUTO,
    UnitsSpec,
    describe_model,
    layer_outputs,
    parse_units,
    resolve_rule,
    run_forward,
)
from convlens.zeiler.field_cuts import ChunkRunner, Projection, pad_crop, project_entries
from convlens.zeiler.receptive_field import receptive_field
from convlens.zeiler.results import TopKResult


class ImageFiles(torch.utils.data.Dataset):
    """Image files as preprocessed tensors, one at a time (for a ``DataLoader``); bad files come back as their
    one-line error message, so the main process can raise it as such (workers would wrap it in a traceback)."""

    def __init__(self, paths: Sequence[Path], preprocessing: Preprocessing) -> None:
        self.paths = list(paths)
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return self.preprocessing.to_tensor(load_image(self.paths[index])), index, ""
        except ConvlensError as exc:
            return torch.zeros(3, *self.preprocessing.input_size), index, str(exc)


def image_batches(paths: Sequence[Path], preprocessing: Preprocessing, batch_size: int = 32,
                  num_workers: int = 0) -> torch.utils.data.DataLoader:
    """Batches ``(inputs, indices, errors)`` in file order; ``num_workers`` processes decode ahead."""
    return torch.utils.data.DataLoader(ImageFiles(paths, preprocessing), batch_size=batch_size, shuffle=False,
                                       num_workers=num_workers, persistent_workers=False,
                                       prefetch_factor=2 if num_workers > 0 else None)


# The scan keeps the preprocessed inputs of the images its table refers to when all the table could refer to
# (units x k images) fits in this many bytes; otherwise they are decoded again for the projections.
KEPT_INPUT_BYTES = 256 * 2**20
EMPTY = -1  # image index and position of a slot no image has filled


@dataclass(frozen=True)
class TopKTable:
    """Per unit, the ``k`` strongest activations seen so far: ``values`` (float32, ``-inf`` in empty slots),
    ``images`` (index into the full list of paths, -1 empty) and ``flat_positions`` (row * width + col in the
    layer's map, -1 empty), each ``units x k``, strongest first, ties by image index.

    ``inputs`` holds the preprocessed inputs (CPU) of the images in the table, when they fit in
    ``KEPT_INPUT_BYTES``. ``layer_calls``: how many times the layer runs per forward pass.
    """

    layer: str
    units: tuple[int, ...]
    k: int
    map_size: tuple[int, int]
    channels: int
    layer_calls: int
    values: torch.Tensor
    images: torch.Tensor
    flat_positions: torch.Tensor
    inputs: dict[int, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    keep_inputs: bool = True

    @classmethod
    def empty(cls, layer: str, units: Sequence[int], k: int, map_size: tuple[int, int], channels: int,
              layer_calls: int, keep_inputs: bool = True) -> TopKTable:
        shape = (len(units), k)
        return cls(layer, tuple(units), k, tuple(map_size), channels, layer_calls, torch.full(shape, -math.inf),
                   torch.full(shape, EMPTY, dtype=torch.long), torch.full(shape, EMPTY, dtype=torch.long), {},
                   keep_inputs)

    def add(self, values: torch.Tensor, images: torch.Tensor, flat_positions: torch.Tensor,
            inputs: torch.Tensor | None = None) -> TopKTable:
        """The table with one batch's activations added: ``values``/``flat_positions`` are ``batch x units``
        (each image's strongest activation per unit), ``images`` the batch's image indices, ``inputs`` its
        preprocessed images (kept for those that enter the table)."""
        images = images.view(-1).long()
        batch = TopKTable(self.layer, self.units, len(images), self.map_size, self.channels, self.layer_calls,
                          values.T.float(), images.view(1, -1).expand(len(self.units), -1), flat_positions.T.long())
        merged = self._combine(batch)
        if merged.keep_inputs and inputs is not None:
            wanted = set(merged.images.unique().tolist())
            for index, image in zip(images.tolist(), inputs, strict=True):
                if index in wanted:
                    merged.inputs[index] = image.clone()  # a clone: a view would keep the whole batch alive
        return merged

    def merge(self, other: TopKTable) -> TopKTable:
        """One table from two over disjoint images (shards of one folder, indexed into the same list of paths):
        the k strongest per unit, ties by image index, exactly what one scan over both would keep."""
        if (self.layer, self.units, self.k, self.map_size) != (other.layer, other.units, other.k, other.map_size):
            raise ConvlensError("top-k tables of different layers, units, k or map sizes cannot be merged")
        return self._combine(other)

    def _combine(self, other: TopKTable) -> TopKTable:
        values = torch.cat([self.values, other.values], dim=1)
        images = torch.cat([self.images, other.images], dim=1)
        positions = torch.cat([self.flat_positions, other.flat_positions], dim=1)
        order = _strongest_first(values, images)[:, :self.k]
        kept = TopKTable(self.layer, self.units, self.k, self.map_size, self.channels, self.layer_calls,
                         values.gather(1, order), images.gather(1, order), positions.gather(1, order), {},
                         self.keep_inputs and other.keep_inputs)
        if kept.keep_inputs:
            wanted = set(kept.images.unique().tolist())
            pool = {**self.inputs, **other.inputs}
            kept.inputs.update({i: x for i, x in pool.items() if i in wanted})
        return kept

    @property
    def positions(self) -> torch.Tensor:
        """``units x k x 2``: (row, col) in the layer's map; -1 in empty slots."""
        rows = torch.where(self.flat_positions >= 0, self.flat_positions // self.map_size[1], EMPTY)
        cols = torch.where(self.flat_positions >= 0, self.flat_positions % self.map_size[1], EMPTY)
        return torch.stack([rows, cols], dim=2)

    def entries(self) -> list[tuple[int, int, int, tuple[int, int], float]]:
        """``(unit index, rank, image index, position, value)`` for every filled slot."""
        positions = self.positions.tolist()
        return [(u, r, image, tuple(positions[u][r]), float(self.values[u, r]))
                for u, row in enumerate(self.images.tolist()) for r, image in enumerate(row) if image >= 0]


def _strongest_first(values: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per row, the order by value (descending), ties by image index (ascending), empty slots last."""
    tie_key = torch.where(images >= 0, images, torch.iinfo(torch.long).max)
    by_image = torch.sort(tie_key, dim=1, stable=True).indices
    by_value = torch.sort(values.gather(1, by_image), dim=1, descending=True, stable=True).indices
    return by_image.gather(1, by_value)


def scan_top(model: ImageClassifier, paths: Sequence[str | Path], layer: str, *, units: UnitsSpec = "0:16",
             k: int = 9, batch_size: int = 32, num_workers: int = 0, first_index: int = 0,
             progress: ProgressLike = False, skipped: list[tuple[str, str]] | None = None) -> TopKTable:
    """One streaming pass over ``paths`` keeping each unit's ``k`` strongest activations. Image indices in the
    table start at ``first_index``: the position of ``paths[0]`` in the whole list when this is one shard.
    Unreadable files are appended to ``skipped`` as (path, reason) and left out; without a list, the first
    one raises."""
    if k < 1:
        raise ConvlensError(f"--k must be at least 1, got {k}")
    loader = image_batches([Path(p) for p in paths], model.preprocessing, batch_size, num_workers)
    table, calls, unit_index = None, None, None
    with preserved_state(as_module(model)) as net, torch.inference_mode():
        device = module_device(net)
        for inputs, indices, errors in track(loader, len(loader), "scanning images", progress):
            if skipped is None:
                _raise_first(errors)
            elif any(errors):
                readable = torch.tensor([not error for error in errors])
                skipped += [(str(paths[int(i)]), e) for i, e in zip(indices.tolist(), errors, strict=True) if e]
                inputs, indices = inputs[readable], indices[readable]
                if len(indices) == 0:
                    continue
            with layer_outputs(net, layer, calls=calls) as record:
                output = run_forward(net, inputs.to(device, non_blocking=True), record, layer)
            if table is None:  # the first batch runs the whole model and learns where to stop next time
                calls = record["calls"]
                table = _empty_table(output, layer, units, k, calls, inputs[0])
                unit_index = torch.tensor(table.units, device=device)
            values, flat = output.index_select(1, unit_index).flatten(2).max(dim=2)
            table = table.add(values.float().cpu(), indices + first_index, flat.cpu(), inputs)
    if table is None:
        first = f" (first: {skipped[0][1]})" if skipped else ""
        raise ConvlensError(f"no readable images to scan{first}")
    return table


def _empty_table(output: torch.Tensor, layer: str, units: UnitsSpec, k: int, calls: int,
                 example: torch.Tensor) -> TopKTable:
    if output.dim() != 4:
        raise ConvlensError(f"layer {layer!r} has output shape {tuple(output.shape[1:])}: choose a layer with "
                            "spatial maps (channels x height x width)")
    chosen = parse_units(units, output.shape[1])
    fits = len(chosen) * k * example.numel() * example.element_size() <= KEPT_INPUT_BYTES
    return TopKTable.empty(layer, chosen, k, (output.shape[2], output.shape[3]), output.shape[1], calls, fits)


def top_activations(model: ImageClassifier, images: str | Path | Sequence[str | Path], layer: str, *,
                    units: UnitsSpec = "0:16", k: int = 9, rule: str = AUTO, batch_size: int = 32,
                    num_workers: int = 0, projection_batch_size: int = 16,
                    progress: ProgressLike = False, strict: bool = False) -> TopKResult:
    """Each unit's ``k`` strongest activations over ``images`` (a folder, searched recursively, or a list of
    files), with the image patch under the receptive field and the projection of that single activation, as
    ``convlens topk`` does. ``units`` as in ``parse_units`` (None: every channel); ``rule`` as in
    ``convlens.zeiler.deconv``; a folder with fewer than ``k`` images fills the slots it can (the others hold
    image -1). Unreadable files are skipped and listed in the summary (``strict``: the first one raises)."""
    start = time.perf_counter()
    paths = image_paths(images)
    skipped: list[tuple[str, str]] | None = None if strict else []
    table = scan_top(model, paths, layer, units=units, k=k, batch_size=batch_size, num_workers=num_workers,
                     progress=progress, skipped=skipped)
    result = topk_result(model, paths, table, rule=rule, batch_size=projection_batch_size, progress=progress,
                         scan_batch_size=batch_size, source=str(images) if isinstance(images, (str, Path)) else None,
                         started=start)
    return dataclasses.replace(result, skipped=tuple(skipped or ()))


def topk_result(model: ImageClassifier, paths: Sequence[str | Path], table: TopKTable, *, rule: str = AUTO,
                batch_size: int = 16, crop_to_field: bool = True, progress: ProgressLike = False,
                scan_batch_size: int | None = None, source: str | None = None,
                started: float | None = None, runner: ChunkRunner | None = None) -> TopKResult:
    """The result of a scanned (or merged) ``table`` over ``paths``: patches and cropped projections for every
    filled slot (projections batched, ``batch_size`` whole images' worth at once).

    ``crop_to_field``: project each activation from the image cut down to its receptive field, which is
    cheaper and gives the same projection (``field_cuts``); False projects from whole images. ``runner``: where
    the chunks of projections run (``field_cuts.ChunkRunner``; default here, ``convlens.distributed`` on Ray).
    """
    start = time.perf_counter() if started is None else started
    chosen_rule = resolve_rule(model, rule)
    entries = table.entries()
    used = sorted({image for _, _, image, _, _ in entries})
    inputs = torch.stack([_input_of(model, table, paths, i) for i in used]) if used else \
        torch.zeros(0, 3, *model.input_size)
    row_of = {image: n for n, image in enumerate(used)}
    rf = receptive_field(model, table.layer, model.input_size, rows={p[0] for _, _, _, p, _ in entries},
                         cols={p[1] for _, _, _, p, _ in entries},
                         probe=(table.layer_calls, (1, table.channels, *table.map_size)))
    jobs = [Projection(n, row_of[image], table.units[u], position, value)
            for n, (u, _, image, position, value) in enumerate(entries)]
    projections = project_entries(model, inputs, jobs, table, chosen_rule, rf if crop_to_field else None,
                                  batch_size, progress, runner)
    height, width = rf.size
    count, k = len(table.units), table.k
    boxes = np.full((count, k, 4), -1, dtype=np.int64)
    patches = np.ones((count, k, height, width, 3), dtype=np.float32)
    crops = np.zeros((count, k, inputs.shape[1], height, width), dtype=np.float32)
    for n, (u, r, image, position, _) in enumerate(entries):
        box = rf.box(*position)
        boxes[u, r] = box
        display = model.preprocessing.to_display(inputs[row_of[image]])
        patches[u, r] = pad_crop(display[box[0]:box[2], box[1]:box[3]], box, rf, channels_last=True, fill=1.0)
        crops[u, r] = pad_crop(projections[n].numpy()[:, box[0]:box[2], box[1]:box[3]], box, rf,
                               channels_last=False, fill=0.0)
    values = table.values.numpy().copy()
    values[table.images.numpy() < 0] = np.nan
    return TopKResult(
        model=describe_model(model), layer=table.layer, rule=chosen_rule, rule_requested=rule,
        units=list(table.units), k=k, paths=[Path(p) for p in paths], values=values,
        images=table.images.numpy().copy(), positions=table.positions.numpy(), map_size=table.map_size,
        layer_calls=table.layer_calls, channels=table.channels, field=rf, boxes=boxes, patches=patches,
        projections=crops, inputs=inputs.numpy(), input_images=used, batch_size=scan_batch_size,
        source=source, compute_seconds=time.perf_counter() - start)


def _input_of(model: ImageClassifier, table: TopKTable, paths: Sequence[str | Path], image: int) -> torch.Tensor:
    kept = table.inputs.get(image)
    return kept if kept is not None else model.preprocessing.to_tensor(load_image(paths[image]))


def image_paths(images: str | Path | Sequence[str | Path]) -> list[Path]:
    """A folder's images (searched recursively, sorted), one file, or the list of files given."""
    if isinstance(images, (str, Path)):
        paths = list_images(images)
    else:
        paths = [Path(p) for p in images]
    if not paths:
        raise ConvlensError(f"no images found in {images}")
    return paths


def _raise_first(errors: Sequence[str]) -> None:
    for error in errors:
        if error:
            raise ConvlensError(error)
