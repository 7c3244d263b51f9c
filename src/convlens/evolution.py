"""How units develop during training (Zeiler & Fergus's Fig. 4), from the snapshots a training run kept.

For each snapshot epoch and each chosen unit, the strongest activation over the given images (one image, or a
folder scanned in one streaming pass per snapshot) is projected to pixel space and cropped to the unit's
receptive field. The field depends on the architecture only, so it is traced once for all snapshots.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from convlens.errors import ConvlensError
from convlens.models.loading import load_model
from convlens.receptive_field import ReceptiveField, receptive_field
from convlens.topk import _image_paths, _tracked, pad_crop, top_activations


@dataclass(frozen=True)
class Snapshot:
    epoch: int
    path: Path  # the .safetensors file (a full convlens checkpoint)


def find_snapshots(run_dir: str | Path) -> list[Snapshot]:
    """The checkpoints in ``RUN_DIR/snapshots`` (``epoch_005.safetensors`` + ``.json``), by epoch."""
    folder = Path(run_dir) / "snapshots"
    if not folder.is_dir():
        raise ConvlensError(f"{run_dir}: no snapshots/ folder; train with --snapshots EPOCHS to keep some")
    snapshots = []
    for weights in sorted(folder.glob("*.safetensors")):
        meta = weights.with_suffix(".json")
        if not meta.is_file():
            continue
        try:
            epoch = json.loads(meta.read_text()).get("epoch")
        except (OSError, json.JSONDecodeError):
            epoch = None
        if epoch is None:
            digits = re.findall(r"\d+", weights.stem)
            if not digits:
                continue
            epoch = digits[-1]
        snapshots.append(Snapshot(int(epoch), weights))
    if not snapshots:
        raise ConvlensError(f"{folder}: no snapshot checkpoints (epoch_NNN.safetensors with .json)")
    return sorted(snapshots, key=lambda s: (s.epoch, s.path.name))


@dataclass
class Evolution:
    """``projections[u, e]`` (C x rh x rw, raw) and ``patches[u, e]`` (rh x rw x 3) of unit ``units[u]``'s
    strongest activation at snapshot ``epochs[e]``: ``values``, ``images`` (index into ``paths``), ``positions``
    and ``boxes`` (top, left, bottom, right) say where it was."""

    layer: str
    rule: str
    units: list[int]
    epochs: list[int]
    snapshots: list[Path]
    paths: list[Path]
    values: np.ndarray  # units x epochs
    images: np.ndarray  # units x epochs
    positions: np.ndarray  # units x epochs x 2
    boxes: np.ndarray  # units x epochs x 4
    projections: np.ndarray
    patches: np.ndarray
    field: ReceptiveField
    inputs: torch.Tensor  # preprocessed images that appear, ordered as ``input_images``
    input_images: list[int]
    model_description: dict


def evolution(run_dir: str | Path, images: str | Path | Sequence[str | Path], layer: str,
              units: str | Sequence[int] | None = "0:8", rule: str = "deconvnet", batch_size: int = 32,
              num_workers: int = 0, device: str | None = "cpu", progress: bool = False) -> Evolution:
    """Strongest projection of each of ``units`` at each snapshot of the run in ``run_dir``."""
    from convlens.deconv import project_activations

    snapshots = find_snapshots(run_dir)
    paths = _image_paths(images)
    found = []  # per snapshot: (top activations, full projections)
    model = None
    for snapshot in _tracked(snapshots, len(snapshots), "snapshots", progress):
        model = load_model(snapshot.path, device=device)
        top = top_activations(model, paths, layer, units, k=1, batch_size=batch_size, num_workers=num_workers)
        inputs = model.prepare([paths[int(i)] for i in top.images[:, 0]])
        positions = [(int(r), int(c)) for r, c in top.positions[:, 0]]
        projected = project_activations(model, inputs, layer, top.units, positions, rule, top.layer_calls)
        found.append((top, projected))
    chosen = found[0][0].units
    values = np.stack([top.values[:, 0].numpy() for top, _ in found], axis=1)
    image_index = np.stack([top.images[:, 0].numpy() for top, _ in found], axis=1)
    positions = np.stack([top.positions[:, 0].numpy() for top, _ in found], axis=1)
    last = found[-1][0]
    rf = receptive_field(model, layer, model.input_size, rows=set(positions[..., 0].ravel().tolist()),
                         cols=set(positions[..., 1].ravel().tolist()),
                         probe=(last.layer_calls, (1, last.channels, *last.map_size)))
    used = sorted(set(image_index.ravel().tolist()))
    inputs = model.prepare([paths[i] for i in used]).cpu()
    row_of = {image: n for n, image in enumerate(used)}
    height, width = rf.size
    channels = inputs.shape[1]
    boxes = np.zeros((len(chosen), len(found), 4), dtype=np.int64)
    crops = np.zeros((len(chosen), len(found), channels, height, width), dtype=np.float32)
    patches = np.ones((len(chosen), len(found), height, width, 3), dtype=np.float32)
    for u in range(len(chosen)):
        for e, (_, projected) in enumerate(found):
            box = rf.box(int(positions[u, e, 0]), int(positions[u, e, 1]))
            boxes[u, e] = box
            crops[u, e] = pad_crop(projected[u].numpy()[:, box[0]:box[2], box[1]:box[3]], box, rf, False, 0.0)
            display = model.preprocessing.to_display(inputs[row_of[int(image_index[u, e])]])
            patches[u, e] = pad_crop(display[box[0]:box[2], box[1]:box[3]], box, rf, True, 1.0)
    return Evolution(layer, rule, chosen, [s.epoch for s in snapshots], [s.path for s in snapshots], paths,
                     values, image_index, positions, boxes, crops, patches, rf, inputs, used, model.describe())


def evolution_figure(result: Evolution, tile_inches: float = 0.9, with_patches: bool = True):
    """Rows: units; columns: snapshot epochs; each tile the strongest projection (and its patch beneath)."""
    import matplotlib.pyplot as plt

    from convlens.deconv import projection_image

    per_unit = 2 if with_patches else 1
    rows, columns = len(result.units) * per_unit, len(result.epochs)
    figure, axes = plt.subplots(rows, columns, squeeze=False,
                                figsize=(columns * tile_inches + 0.6, rows * tile_inches * 0.92 + 0.7))
    for u, unit in enumerate(result.units):
        for e, epoch in enumerate(result.epochs):
            axis = axes[u * per_unit, e]
            axis.imshow(projection_image(result.projections[u, e]), interpolation="nearest")
            if u == 0:
                axis.set_title(f"epoch {epoch}", fontsize=8)
            if with_patches:
                axes[u * per_unit + 1, e].imshow(result.patches[u, e], interpolation="nearest")
        axes[u * per_unit, 0].set_ylabel(f"unit {unit}", fontsize=8)
        if with_patches:
            axes[u * per_unit + 1, 0].set_ylabel("patch", fontsize=7, color="#666666")
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"{result.layer}: strongest {result.rule} projection per unit at each snapshot "
                    f"(over {len(result.paths)} image{'s' if len(result.paths) != 1 else ''})", fontsize=10)
    figure.tight_layout()
    return figure
