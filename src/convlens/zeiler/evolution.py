"""How units develop during training (Zeiler & Fergus's Fig. 4), from the snapshots a training run kept.

For each snapshot epoch and each chosen unit, the strongest activation over the given images (one image, or a
folder scanned in one streaming pass per snapshot) is projected to pixel space and cropped to the unit's
receptive field. The field depends on the architecture only, so it is traced once for all snapshots.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convlens.errors import ConvlensError
from convlens.models.loading import load_model
from convlens.progress import ProgressLike, track
from convlens.zeiler.deconv import AUTO, UnitsSpec, project_activations, resolve_rule
from convlens.zeiler.field_cuts import pad_crop
from convlens.zeiler.receptive_field import receptive_field
from convlens.zeiler.results import EvolutionResult
from convlens.zeiler.topk import image_paths, scan_top


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


def evolution(run_dir: str | Path, images: str | Path | Sequence[str | Path], layer: str, *,
              units: UnitsSpec = "0:8", rule: str = AUTO, batch_size: int = 32, num_workers: int = 0,
              device: str | None = "cpu", progress: ProgressLike = False) -> EvolutionResult:
    """The strongest projection of each of ``units`` at each snapshot of the training run in ``run_dir``
    (``RUN_DIR/snapshots``), over ``images`` (one image, a folder or a list of files), as ``convlens
    evolution`` does. ``rule`` as in ``convlens.zeiler.deconv`` (``"auto"`` is resolved on the architecture)."""
    start = time.perf_counter()
    snapshots = find_snapshots(run_dir)
    paths = image_paths(images)
    found = []  # per snapshot: (top-1 table, full projections)
    model, chosen_rule = None, rule
    for snapshot in track(snapshots, len(snapshots), "snapshots", progress):
        model = load_model(snapshot.path, device=device)
        chosen_rule = resolve_rule(model, rule)
        table = scan_top(model, paths, layer, units=units, k=1, batch_size=batch_size, num_workers=num_workers)
        inputs = model.prepare([paths[int(i)] for i in table.images[:, 0]])
        positions = [(int(r), int(c)) for r, c in table.positions[:, 0].tolist()]
        projected = project_activations(model, inputs, layer, list(table.units), positions, chosen_rule,
                                        table.layer_calls)
        found.append((table, projected))
    chosen = list(found[0][0].units)
    values = np.stack([table.values[:, 0].numpy() for table, _ in found], axis=1)
    image_index = np.stack([table.images[:, 0].numpy() for table, _ in found], axis=1)
    positions = np.stack([table.positions[:, 0].numpy() for table, _ in found], axis=1)
    last = found[-1][0]
    rf = receptive_field(model, layer, model.input_size, rows=set(positions[..., 0].ravel().tolist()),
                         cols=set(positions[..., 1].ravel().tolist()),
                         probe=(last.layer_calls, (1, last.channels, *last.map_size)))
    used = sorted(set(image_index.ravel().tolist()))
    inputs = model.prepare([paths[i] for i in used]).cpu()
    row_of = {image: n for n, image in enumerate(used)}
    height, width = rf.size
    boxes = np.zeros((len(chosen), len(found), 4), dtype=np.int64)
    crops = np.zeros((len(chosen), len(found), inputs.shape[1], height, width), dtype=np.float32)
    patches = np.ones((len(chosen), len(found), height, width, 3), dtype=np.float32)
    for u in range(len(chosen)):
        for e, (_, projected) in enumerate(found):
            box = rf.box(int(positions[u, e, 0]), int(positions[u, e, 1]))
            boxes[u, e] = box
            crops[u, e] = pad_crop(projected[u].numpy()[:, box[0]:box[2], box[1]:box[3]], box, rf, False, 0.0)
            display = model.preprocessing.to_display(inputs[row_of[int(image_index[u, e])]])
            patches[u, e] = pad_crop(display[box[0]:box[2], box[1]:box[3]], box, rf, True, 1.0)
    return EvolutionResult(
        model=model.describe(), run_dir=Path(run_dir), layer=layer, rule=chosen_rule, rule_requested=rule,
        units=chosen, epochs=[s.epoch for s in snapshots], snapshots=[s.path for s in snapshots], paths=paths,
        values=values, images=image_index, positions=positions, boxes=boxes, projections=crops, patches=patches,
        field=rf, inputs=inputs.numpy(), input_images=used,
        source=str(images) if isinstance(images, (str, Path)) else None, compute_seconds=time.perf_counter() - start)
