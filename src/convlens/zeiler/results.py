"""The results of ``convlens.zeiler.deconv``, ``top_activations`` and ``evolution``: frozen, numpy only, with
the three views of ``convlens.result.Result`` (``arrays()``, ``summary()``, ``figures()``) and its ``save``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from matplotlib.figure import Figure

from convlens.result import Result
from convlens.zeiler.receptive_field import ReceptiveField


@dataclass(frozen=True, eq=False)
class DeconvResult(Result):
    """Projections of channels of ``layer``, one row per (image, unit): row ``r`` projects unit ``units[r]`` of
    image ``image[r]``; ``projections[r]`` is ``C x H x W``, raw (not normalised); ``peaks[r]`` the channel's
    largest activation, at ``peak_positions[r]`` in the layer's map. ``rule`` is the rule that drew them
    (``rule_requested`` may be ``"auto"``)."""

    command: ClassVar[str] = "deconv"

    model: dict
    layer: str
    rule: str
    rule_requested: str
    position: str
    top: int | None
    inputs: np.ndarray  # N x C x H x W, preprocessed
    displays: np.ndarray  # N x H x W x 3 in [0, 1]
    image: np.ndarray  # R
    units: np.ndarray  # R
    projections: np.ndarray  # R x C x H x W
    peaks: np.ndarray  # R
    peak_positions: np.ndarray  # R x 2 (R x dims of the map)
    layer_output_shape: tuple[int, ...]  # per image
    sources: list[str]
    compute_seconds: float = 0.0

    def arrays(self) -> dict[str, np.ndarray]:
        return {"input": self.inputs, "projection": self.projections, "units": self.units, "image": self.image,
                "peak": self.peaks, "peak_position": self.peak_positions}

    def summary(self) -> dict[str, Any]:
        return {"command": self.command, "inputs": self.sources, "model": self.model, "layer": self.layer,
                "units": self.units.tolist(), "rule": self.rule, "rule_requested": self.rule_requested,
                "position": self.position, "top": self.top, "layer_output_shape": list(self.layer_output_shape),
                "peaks": [{"image": int(b), "unit": int(u), "value": float(v), "position": p.tolist()}
                          for b, u, v, p in zip(self.image, self.units, self.peaks, self.peak_positions,
                                                strict=True)],
                "compute_seconds": self.compute_seconds}

    def figure_names(self) -> list[str]:
        """``projections`` and one ``projection_unitNNNN`` per row (``projection_imageNNN_unitNNNN`` when the
        result holds several images)."""
        several = len(self.inputs) > 1
        return ["projections", *(f"projection_image{int(b):03d}_unit{int(u):04d}" if several
                                 else f"projection_unit{int(u):04d}" for b, u in zip(self.image, self.units,
                                                                                      strict=True))]

    def iter_figures(self) -> Iterator[tuple[str, Figure]]:
        from convlens.zeiler.figures import projections_figure, unit_projection_figure

        names = self.figure_names()
        yield names[0], projections_figure(self)
        for row, name in enumerate(names[1:]):
            yield name, unit_projection_figure(self, row)

    def figures(self) -> dict[str, Figure]:
        return dict(self.iter_figures())


@dataclass(frozen=True, eq=False)
class TopKResult(Result):
    """Each of ``units``' ``k`` strongest activations over ``paths``, strongest first, ties by image index.

    ``values[u, r]`` (NaN in empty slots: fewer than ``k`` images), ``images[u, r]`` (index into ``paths``, -1
    empty), ``positions[u, r] = (row, col)`` in the layer's map of size ``map_size``; ``boxes[u, r]`` the
    receptive field there (top, left, bottom, right input pixels), ``patches[u, r]`` the image under it (``rh x
    rw x 3``) and ``projections[u, r]`` the single activation's projection cropped to it (``C x rh x rw``, raw).
    Crops clipped by the image border are padded to the field's size on the clipped side (white patches, zero
    projections). ``inputs`` are the preprocessed images in the table, ``input_images`` their indices.
    """

    command: ClassVar[str] = "topk"

    model: dict
    layer: str
    rule: str
    rule_requested: str
    units: list[int]
    k: int
    paths: list[Path]
    values: np.ndarray
    images: np.ndarray
    positions: np.ndarray
    map_size: tuple[int, int]
    layer_calls: int
    channels: int
    field: ReceptiveField
    boxes: np.ndarray
    patches: np.ndarray
    projections: np.ndarray
    inputs: np.ndarray
    input_images: list[int]
    batch_size: int | None = None
    source: str | None = None
    compute_seconds: float = 0.0
    skipped: tuple[tuple[str, str], ...] = ()  # unreadable files left out: (path, reason)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"input": self.inputs, "input_images": np.asarray(self.input_images, dtype=np.int64),
                "units": np.asarray(self.units, dtype=np.int64), "values": self.values, "images": self.images,
                "positions": self.positions, "boxes": self.boxes, "patches": self.patches,
                "projections": self.projections}

    def summary(self) -> dict[str, Any]:
        return {"command": self.command, "inputs": [self.source] if self.source else [str(p) for p in self.paths],
                "images_scanned": len(self.paths), "model": self.model, "layer": self.layer, "units": self.units,
                "k": self.k, "rule": self.rule, "rule_requested": self.rule_requested, "batch_size": self.batch_size,
                "layer_map_size": list(self.map_size), "receptive_field": self.field.to_dict(),
                "top": self.table(), "compute_seconds": self.compute_seconds,
                "unreadable_images_skipped": [{"image": path, "reason": reason} for path, reason in self.skipped]}

    def table(self) -> list[dict]:
        """Per unit, its filled slots: image path, value and position."""
        return [{"unit": unit, "top": [
            {"image": str(self.paths[int(self.images[u, r])]), "value": float(self.values[u, r]),
             "position": [int(self.positions[u, r, 0]), int(self.positions[u, r, 1])]}
            for r in range(self.k) if int(self.images[u, r]) >= 0]} for u, unit in enumerate(self.units)]

    def figures(self) -> dict[str, Figure]:
        from convlens.zeiler.figures import top_examples_figure

        return {"topk": top_examples_figure(self)}


@dataclass(frozen=True, eq=False)
class EvolutionResult(Result):
    """``projections[u, e]`` (C x rh x rw, raw) and ``patches[u, e]`` (rh x rw x 3) of unit ``units[u]``'s
    strongest activation at snapshot ``epochs[e]``: ``values``, ``images`` (index into ``paths``),
    ``positions`` and ``boxes`` (top, left, bottom, right) say where it was."""

    command: ClassVar[str] = "evolution"

    model: dict
    run_dir: Path
    layer: str
    rule: str
    rule_requested: str
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
    inputs: np.ndarray  # preprocessed images that appear, ordered as ``input_images``
    input_images: list[int]
    source: str | None = None
    compute_seconds: float = 0.0

    def arrays(self) -> dict[str, np.ndarray]:
        return {"input": self.inputs, "input_images": np.asarray(self.input_images, dtype=np.int64),
                "units": np.asarray(self.units, dtype=np.int64), "epochs": np.asarray(self.epochs, dtype=np.int64),
                "values": self.values, "images": self.images, "positions": self.positions, "boxes": self.boxes,
                "projections": self.projections, "patches": self.patches}

    def summary(self) -> dict[str, Any]:
        return {"command": self.command, "inputs": [self.source] if self.source else [str(p) for p in self.paths],
                "run_dir": str(self.run_dir), "snapshots": [str(p) for p in self.snapshots], "model": self.model,
                "layer": self.layer, "units": self.units, "epochs": self.epochs, "rule": self.rule,
                "rule_requested": self.rule_requested, "receptive_field": self.field.to_dict(),
                "strongest": [{"unit": unit, "epoch": epoch, "value": float(self.values[u, e]),
                               "image": str(self.paths[int(self.images[u, e])]),
                               "position": self.positions[u, e].tolist()}
                              for u, unit in enumerate(self.units) for e, epoch in enumerate(self.epochs)],
                "compute_seconds": self.compute_seconds}

    def figures(self) -> dict[str, Figure]:
        from convlens.zeiler.figures import evolution_figure

        return {"evolution": evolution_figure(self)}
