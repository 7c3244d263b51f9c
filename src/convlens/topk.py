"""Each unit's strongest activations across an image folder, with their patches and deconv projections.

Zeiler & Fergus's Fig. 2: for every unit of a layer, the k images (9 in the paper) where it fires hardest, the
image patch under its receptive field at that spot, and the deconvnet projection of that single activation
cropped to the same field.

The scan is one streaming, batched pass (a ``DataLoader`` over the files): memory is one batch plus a running
``units x k`` table, whatever the folder's size. Each image counts once per unit, with its strongest position;
ties keep the image that came first (sorted paths), so the result is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from convlens.data.images import list_images, load_image
from convlens.deconv import check_rule, layer_outputs, project_and_measure, run_forward
from convlens.errors import ConvlensError
from convlens.hooks import preserved_state
from convlens.models.classifier import ImageClassifier, as_module
from convlens.models.preprocessing import Preprocessing
from convlens.receptive_field import ReceptiveField, receptive_field


def parse_units(spec: str | Sequence[int] | None, channels: int) -> list[int]:
    """``"0:16"``, ``"0:64:4"``, ``"3,7,12"`` or a list of ints to channel indices (a range is clipped to
    ``channels``; an explicit index out of range is an error). None means every channel."""
    if spec is None:
        return list(range(channels))
    if isinstance(spec, str):
        units: list[int] = []
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            if ":" in part:
                try:
                    bounds = [int(b) if b else None for b in part.split(":")]
                except ValueError:
                    raise ConvlensError(f"--units {spec!r}: expected START:STOP[:STEP] or a list like 3,7,12") from None
                units += list(range(channels))[slice(*bounds)]
            else:
                try:
                    units.append(int(part))
                except ValueError:
                    raise ConvlensError(f"--units {spec!r}: expected START:STOP[:STEP] or a list like 3,7,12") from None
    else:
        units = [int(u) for u in spec]
    bad = [u for u in units if not 0 <= u < channels]
    if bad:
        raise ConvlensError(f"unit {bad[0]} out of range: the layer has {channels} channels")
    if not units:
        raise ConvlensError(f"--units {spec!r} selects no channel (the layer has {channels})")
    return list(dict.fromkeys(units))


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


@dataclass
class TopActivations:
    """For each of ``units``, the ``k`` strongest activations over ``paths``, strongest first.

    ``values[u, r]``, ``images[u, r]`` (index into ``paths``; -1 where fewer than ``k`` images were seen) and
    ``positions[u, r] = (row, col)`` in the layer's map of size ``map_size``.
    """

    layer: str
    units: list[int]
    k: int
    paths: list[Path]
    values: torch.Tensor
    images: torch.Tensor
    positions: torch.Tensor
    map_size: tuple[int, int]
    layer_calls: int
    channels: int  # of the layer
    # preprocessed inputs (CPU) of the images in the table, kept by the scan so that ``top_examples`` need not
    # decode them again; empty when they would not fit in ``KEPT_INPUT_BYTES``
    inputs: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def entries(self) -> list[tuple[int, int, int, tuple[int, int], float]]:
        """``(unit index, rank, image index, position, value)`` for every filled slot."""
        found = []
        for u in range(len(self.units)):
            for r in range(self.k):
                image = int(self.images[u, r])
                if image >= 0:
                    position = (int(self.positions[u, r, 0]), int(self.positions[u, r, 1]))
                    found.append((u, r, image, position, float(self.values[u, r])))
        return found


# The scan keeps the preprocessed inputs of the images its table refers to when all the table could refer to
# (units x k images) fits in this many bytes; otherwise ``top_examples`` decodes them again.
KEPT_INPUT_BYTES = 256 * 2**20


class _KeptInputs:
    """The inputs of the images in the running table, nothing else (memory stays bounded by units x k)."""

    def __init__(self, slots: int, example: torch.Tensor) -> None:
        self.enabled = slots * example.numel() * example.element_size() <= KEPT_INPUT_BYTES
        self.inputs: dict[int, torch.Tensor] = {}

    def update(self, table_images: torch.Tensor, batch: torch.Tensor, indices: torch.Tensor) -> None:
        if not self.enabled:
            return
        wanted = set(torch.unique(table_images).tolist())
        self.inputs = {i: x for i, x in self.inputs.items() if i in wanted}
        for row, index in enumerate(indices.tolist()):
            if index in wanted:
                self.inputs[index] = batch[row].clone()  # a clone: a view would keep the whole batch alive


class _RunningTop:
    """The running ``units x k`` table, merged batch by batch (a stable sort keeps earlier images on ties)."""

    def __init__(self, count: int, k: int) -> None:
        self.k = k
        self.values = torch.full((count, 0), -math.inf)
        self.images = torch.zeros((count, 0), dtype=torch.long)
        self.flat_positions = torch.zeros((count, 0), dtype=torch.long)

    def merge(self, values: torch.Tensor, images: torch.Tensor, flat_positions: torch.Tensor) -> None:
        """``values``/``flat_positions``: ``batch x units``; ``images``: ``batch``."""
        values = torch.cat([self.values, values.T], dim=1)
        images = torch.cat([self.images, images.view(1, -1).expand(values.shape[0], -1)], dim=1)
        flat_positions = torch.cat([self.flat_positions, flat_positions.T], dim=1)
        order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :self.k]
        self.values = values.gather(1, order)
        self.images = images.gather(1, order)
        self.flat_positions = flat_positions.gather(1, order)


def top_activations(model: ImageClassifier, images: str | Path | Sequence[str | Path], layer: str,
                    units: str | Sequence[int] | None = None, k: int = 9, batch_size: int = 32,
                    num_workers: int = 0, progress: bool = False) -> TopActivations:
    """One streaming pass over ``images`` (a folder, searched recursively, or a list of files) keeping each
    unit's ``k`` strongest activations. ``units`` as in ``parse_units`` (None: every channel)."""
    if k < 1:
        raise ConvlensError(f"--k must be at least 1, got {k}")
    paths = _image_paths(images)
    module = as_module(model)
    loader = image_batches(paths, model.preprocessing, batch_size, num_workers)
    batches = _tracked(loader, len(loader), "scanning images", progress)
    running = None
    calls = None
    chosen: list[int] = []
    map_size, channels = (1, 1), 0
    with preserved_state(module) as net, torch.inference_mode():
        device = next(iter(net.parameters()), torch.empty(0)).device
        for inputs, indices, errors in batches:
            _raise_first(errors)
            with layer_outputs(net, layer, calls=calls) as record:
                output = run_forward(net, inputs.to(device, non_blocking=True), record, layer)
            if running is None:  # the first batch runs the whole model and learns where to stop next time
                calls = record["calls"]
                _check_spatial(output, layer)
                channels = output.shape[1]
                chosen = parse_units(units, channels)
                map_size = (output.shape[2], output.shape[3])
                running = _RunningTop(len(chosen), k)
                kept = _KeptInputs(len(chosen) * k, inputs[0])
                unit_index = torch.tensor(chosen, device=device)
            maps = output.index_select(1, unit_index).flatten(2)
            values, flat = maps.max(dim=2)
            running.merge(values.float().cpu(), indices, flat.cpu())
            kept.update(running.images, inputs, indices)
    rows, cols = running.flat_positions // map_size[1], running.flat_positions % map_size[1]
    images_taken = torch.where(torch.isfinite(running.values), running.images, torch.full_like(running.images, -1))
    return TopActivations(layer, chosen, k, paths, running.values, images_taken, torch.stack([rows, cols], dim=2),
                          map_size, int(calls), channels, kept.inputs)


def _image_paths(images: str | Path | Sequence[str | Path]) -> list[Path]:
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


def _check_spatial(output: torch.Tensor, layer: str) -> None:
    if output.dim() != 4:
        raise ConvlensError(f"layer {layer!r} has output shape {tuple(output.shape[1:])}: choose a layer with "
                            "spatial maps (channels x height x width)")


def _tracked(items: Iterable, total: int, description: str, progress: bool) -> Iterable:
    if not progress:
        return items
    from convlens.cli.common import track

    return track(items, total=total, description=description)


@dataclass
class TopExamples:
    """``TopActivations`` with, for every slot, the patch under the receptive field and the projection of that
    single activation cropped to it. Crops clipped by the image border are padded to the field's full size
    (``field.size``) on the clipped side: white for patches, zero for projections."""

    top: TopActivations
    rule: str
    field: ReceptiveField
    boxes: np.ndarray  # units x k x 4: top, left, bottom, right in input pixels; -1 for empty slots
    patches: np.ndarray  # units x k x rh x rw x 3 display pixels in [0, 1]
    projections: np.ndarray  # units x k x C x rh x rw raw projections
    inputs: torch.Tensor  # the preprocessed images that appear, in order of ``input_images``
    input_images: list[int] = field(default_factory=list)  # indices into top.paths


def top_examples(model: ImageClassifier, top: TopActivations, rule: str = "deconvnet", batch_size: int = 16,
                 progress: bool = False, crop_to_field: bool = True) -> TopExamples:
    """Patches and cropped projections for every slot of ``top`` (projections batched, ``batch_size`` at once).

    ``crop_to_field``: project each activation from the image cut down to its receptive field, which is
    cheaper and gives the same projection (see ``_project_entries``); False projects from whole images.
    """
    check_rule(rule)
    entries = top.entries()
    used = sorted({image for _, _, image, _, _ in entries})
    inputs = torch.stack([_input_of(model, top, i) for i in used]) if used else \
        torch.zeros(0, 3, *model.input_size)
    row_of = {image: n for n, image in enumerate(used)}
    rf = receptive_field(model, top.layer, model.input_size, rows={p[0] for _, _, _, p, _ in entries},
                         cols={p[1] for _, _, _, p, _ in entries},
                         probe=(top.layer_calls, (1, top.channels, *top.map_size)))
    jobs = [_Projection(n, row_of[image], top.units[u], position, value)
            for n, (u, _, image, position, value) in enumerate(entries)]
    projections = _project_entries(model, inputs, jobs, top, rule, rf if crop_to_field else None, batch_size,
                                   progress)
    height, width = rf.size
    count, k = len(top.units), top.k
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
    return TopExamples(top, rule, rf, boxes, patches, crops, inputs, used)


def _input_of(model: ImageClassifier, top: TopActivations, image: int) -> torch.Tensor:
    kept = top.inputs.get(image)
    return kept if kept is not None else model.preprocessing.to_tensor(load_image(top.paths[image]))


@dataclass(frozen=True)
class _Projection:
    """One single-activation projection to compute: slot ``slot`` of the entries, from image row ``row``."""

    slot: int
    row: int
    unit: int
    position: tuple[int, int]
    value: float  # the activation the scan found there


def _project_entries(model: ImageClassifier, inputs: torch.Tensor, jobs: list[_Projection], top: TopActivations,
                     rule: str, rf: ReceptiveField | None, batch_size: int, progress: bool) -> torch.Tensor:
    """Full-size projections of every job's single activation.

    Nothing outside an activation's receptive field reaches it, so its forward pass and its projection can run
    on the image cut down to the field: the cut starts on a multiple of the layer's stride, so every layer
    sees the same grid, and the layer's own zero padding only touches positions outside the field. Layers that
    also see the whole image (squeeze-excitation gates on the way) get whole images. The activation in the cut
    image is checked against the value the scan found; where they differ (padding the cut differently from the
    whole image, say), the whole image is used instead.
    """
    height, width = inputs.shape[-2:]
    projections = torch.zeros(len(jobs), *inputs.shape[1:])
    cut = rf is not None and not rf.global_context
    windows = _field_windows(jobs, rf, top.map_size, (height, width)) if cut else {}
    groups: dict[tuple[int, int], list[_Projection]] = {}
    for job in jobs:
        window = windows.get(job.slot)
        shape = (window[2] - window[0], window[3] - window[1]) if window else (height, width)
        groups.setdefault(shape, []).append(job)
    chunks = []
    for shape, members in groups.items():
        # batch_size counts whole images: cuts of a quarter of the area go four times as many at once
        per_batch = max(1, batch_size * height * width // (shape[0] * shape[1]))
        chunks += [(shape, members[start:start + per_batch]) for start in range(0, len(members), per_batch)]
    whole: list[_Projection] = []
    for shape, chunk in _tracked(chunks, len(chunks), "projecting", progress):
        if shape == (height, width):
            whole += chunk
            continue
        whole += _project_cut(model, inputs, chunk, [windows[job.slot] for job in chunk], top, rule, projections)
    for start in range(0, len(whole), batch_size):
        chunk = whole[start:start + batch_size]
        projections[[job.slot for job in chunk]] = project_and_measure(
            model, inputs[[job.row for job in chunk]], top.layer, [job.unit for job in chunk],
            [job.position for job in chunk], rule, layer_calls=top.layer_calls)[0]
    return projections


def _field_windows(jobs: list[_Projection], rf: ReceptiveField, map_size: tuple[int, int],
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


def _project_cut(model: ImageClassifier, inputs: torch.Tensor, jobs: list[_Projection],
                 windows: list[tuple[int, int, int, int]], top: TopActivations, rule: str,
                 projections: torch.Tensor) -> list[_Projection]:
    """Project ``jobs`` from their cut images into ``projections``; returns the jobs whose cut did not
    reproduce the scanned activation (to be projected from the whole image)."""
    strides = _whole_strides(tuple(inputs.shape[-2:]), top.map_size)
    cuts = torch.stack([inputs[job.row, :, t:b, left:r] for job, (t, left, b, r) in zip(jobs, windows, strict=True)])
    positions = [(job.position[0] - t // strides[0], job.position[1] - left // strides[1])
                 for job, (t, left, _, _) in zip(jobs, windows, strict=True)]
    try:
        cut_projections, fed = project_and_measure(model, cuts, top.layer, [job.unit for job in jobs], positions,
                                                   rule, layer_calls=top.layer_calls)
    except (RuntimeError, ValueError, IndexError, ConvlensError):  # the cut is too small for some layer
        return list(jobs)
    expected = torch.tensor([job.value for job in jobs], dtype=torch.float32)
    scale = float(expected.abs().max()) if len(expected) else 0.0
    same = torch.isclose(fed, expected, rtol=1e-4, atol=1e-5 * scale + 1e-12)
    missed = []
    for n, (job, (t, left, b, r)) in enumerate(zip(jobs, windows, strict=True)):
        if same[n]:
            projections[job.slot, :, t:b, left:r] = cut_projections[n]
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


def top_examples_figure(examples: TopExamples, title: str | None = None, units_per_row: int = 4,
                        tile_inches: float = 0.6):
    """The paper's Fig. 2 layout: for each unit, its projections in a grid beside the matching patches."""
    import matplotlib.pyplot as plt

    from convlens.deconv import projection_image

    top = examples.top
    side = math.ceil(math.sqrt(top.k))
    count = len(top.units)
    columns = min(units_per_row, count)
    rows = math.ceil(count / columns)
    figure = plt.figure(figsize=(columns * (2 * side + 1.2) * tile_inches, rows * (side + 0.9) * tile_inches + 0.5))
    outer = figure.add_gridspec(rows, columns, wspace=0.12, hspace=0.35)
    for u, unit in enumerate(top.units):
        panel = outer[u // columns, u % columns].subgridspec(side, 2 * side + 1, wspace=0.04, hspace=0.04,
                                                           width_ratios=[1] * side + [0.25] + [1] * side)
        for r in range(side * side):
            for offset, tile in ((0, "projection"), (side + 1, "patch")):
                axis = figure.add_subplot(panel[r // side, offset + r % side])
                axis.set_xticks([])
                axis.set_yticks([])
                for spine in axis.spines.values():
                    spine.set_color("#bbbbbb")
                    spine.set_linewidth(0.5)
                if r >= top.k or int(top.images[u, r]) < 0:
                    axis.set_axis_off()
                    continue
                if tile == "projection":
                    axis.imshow(projection_image(examples.projections[u, r]), interpolation="nearest")
                else:
                    axis.imshow(examples.patches[u, r], interpolation="nearest")
                if r == 0 and offset == 0:
                    peak = float(top.values[u, 0])
                    axis.set_title(f"unit {unit}  (max {peak:.3g})", fontsize=8, loc="left", pad=3)
    height, width = examples.field.size
    figure.suptitle(title or f"{top.layer}: top-{top.k} activations per unit over {len(top.paths)} images "
                             f"({examples.rule} projections | image patches, field {height}x{width} px)",
                    fontsize=10)
    return figure



