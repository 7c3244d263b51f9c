"""The report's shared pass: one forward per batch of images feeds the predictions, every chosen layer's feature
maps, the top-k table of each unit, its activation histogram and the units' mean activations.

Memory stays bounded by the images' inputs (kept when they fit, for the projections) plus, per layer, a
``units x k`` table, a ``units x bins`` histogram, ``images x units`` means and a few small uint8 tiles per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from convlens.errors import ConvlensError
from convlens.hooks import capture, forward_hooks, module_device
from convlens.models.classifier import ImageClassifier
from convlens.progress import ProgressLike, track
from convlens.zeiler.topk import KEPT_INPUT_BYTES, TopKTable, image_batches

HISTOGRAM_BINS = 40
TILES_PER_IMAGE = 8  # the strongest channels of each image shown on a layer page
TILE_SIDE = 64  # feature-map tiles are kept at most this many pixels a side (uint8)


@dataclass
class LayerScan:
    """What the pass learned about one layer."""

    name: str
    channels: int
    map_size: tuple[int, int]
    calls: int
    means: np.ndarray  # images x channels: mean activation of each channel on each image
    maxima: np.ndarray  # images x channels: its strongest activation
    top: TopKTable  # every channel's k strongest activations over the images
    paths: list[Path]
    histogram_edges: np.ndarray  # bins + 1 (values outside the first batch's range fall in the end bins)
    histogram_counts: np.ndarray  # channels x bins: every activation of every image
    image_channels: np.ndarray  # images x TILES_PER_IMAGE: each image's strongest channels, strongest first
    image_tiles: np.ndarray  # images x TILES_PER_IMAGE x h x w uint8, each map scaled to its own range
    tile_ranges: np.ndarray  # images x TILES_PER_IMAGE x 2: each tile's (min, max) activation

    @property
    def ranking(self) -> np.ndarray:
        """Channels by mean activation over all images, strongest first."""
        return np.argsort(-self.means.mean(axis=0), kind="stable")


@dataclass
class Scan:
    paths: list[Path]
    probabilities: torch.Tensor  # images x classes
    inputs: torch.Tensor | None  # images x 3 x H x W on the CPU, when they fit in KEPT_INPUT_BYTES
    layers: dict[str, LayerScan] = field(default_factory=dict)
    seconds: float = 0.0


class _LayerAccumulator:
    def __init__(self, name: str, k: int) -> None:
        self.name, self.k = name, k
        self.table: TopKTable | None = None
        self.means: list[torch.Tensor] = []
        self.maxima: list[torch.Tensor] = []
        self.channels_shown: list[torch.Tensor] = []
        self.tiles: list[torch.Tensor] = []
        self.ranges: list[torch.Tensor] = []
        self.edges: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None
        self.map_size = (1, 1)

    def add(self, output: torch.Tensor, indices: torch.Tensor, calls: int) -> None:
        if output.dim() != 4:
            raise ConvlensError(f"layer {self.name!r} has output shape {tuple(output.shape[1:])}: the report shows "
                                "layers with spatial maps (channels x height x width); choose others with --layer")
        output = output.float()
        batch, channels, height, width = output.shape
        if self.table is None:
            # inputs are kept once for all layers by the pass, not per table
            self.table = TopKTable.empty(self.name, range(channels), self.k, (height, width), channels, calls,
                                         keep_inputs=False)
            self.map_size = (height, width)
            low, high = float(output.min()), float(output.max())
            high = high if high > low else low + 1.0
            self.edges = torch.linspace(low, high, HISTOGRAM_BINS + 1)
            self.counts = torch.zeros(channels * HISTOGRAM_BINS, dtype=torch.long)
        flat = output.flatten(2)
        values, positions = flat.max(dim=2)
        self.table = self.table.add(values.cpu(), indices, positions.cpu())
        means = flat.mean(dim=2)
        self.means.append(means.cpu())
        self.maxima.append(values.cpu())
        self._histogram(flat)
        self._tiles(output, means)

    def _histogram(self, flat: torch.Tensor) -> None:
        edges = self.edges.to(flat.device)
        bins = torch.bucketize(flat, edges[1:-1]).clamp_(0, HISTOGRAM_BINS - 1)
        offsets = torch.arange(flat.shape[1], device=flat.device).view(1, -1, 1) * HISTOGRAM_BINS
        self.counts += torch.bincount((bins + offsets).flatten(), minlength=len(self.counts)).cpu()

    def _tiles(self, output: torch.Tensor, means: torch.Tensor) -> None:
        count = min(TILES_PER_IMAGE, output.shape[1])
        chosen = torch.argsort(-means, dim=1, stable=True)[:, :count]
        maps = output.gather(1, chosen[:, :, None, None].expand(-1, -1, *output.shape[2:]))
        if max(maps.shape[2:]) > TILE_SIDE:
            scale = TILE_SIDE / max(maps.shape[2:])
            size = (max(1, round(maps.shape[2] * scale)), max(1, round(maps.shape[3] * scale)))
            maps = F.interpolate(maps, size=size, mode="area")
        low = maps.amin(dim=(2, 3), keepdim=True)
        high = maps.amax(dim=(2, 3), keepdim=True)
        span = torch.where(high > low, high - low, torch.ones_like(high))
        self.tiles.append(((maps - low) / span * 255).round().to(torch.uint8).cpu())
        self.ranges.append(torch.cat([low, high], dim=2)[..., 0].cpu())
        self.channels_shown.append(chosen.cpu())

    def finish(self, paths: list[Path], inputs: dict[int, torch.Tensor]) -> LayerScan:
        channels = self.table.channels
        table = replace(self.table, inputs=inputs)
        return LayerScan(self.name, channels, self.map_size, table.layer_calls, torch.cat(self.means).numpy(),
                         torch.cat(self.maxima).numpy(), table, paths, self.edges.numpy(),
                         self.counts.view(channels, HISTOGRAM_BINS).numpy(), torch.cat(self.channels_shown).numpy(),
                         torch.cat(self.tiles).numpy(), torch.cat(self.ranges).numpy())


def shared_pass(model: ImageClassifier, paths: Sequence[Path], layers: Sequence[str], k: int = 9,
                batch_size: int = 32, progress: ProgressLike = False) -> Scan:
    """One forward per batch of ``paths``, capturing every layer of ``layers`` at once."""
    import time

    start = time.perf_counter()
    paths = list(paths)
    loader = image_batches(paths, model.preprocessing, batch_size)
    example_bytes = 3 * model.input_size[0] * model.input_size[1] * 4
    keep_inputs = len(paths) * example_bytes <= KEPT_INPUT_BYTES
    accumulators = {name: _LayerAccumulator(name, k) for name in layers}
    calls = {name: 0 for name in layers}  # runs per forward pass: the top-k projections stop after the last
    probabilities, kept = [], []
    device = module_device(model)
    with capture(model, list(layers)) as seen, torch.inference_mode():
        for batch, (inputs, indices, errors) in enumerate(track(loader, len(loader), "report: scanning images",
                                                                progress)):
            for error in errors:
                if error:
                    raise ConvlensError(error)
            counting = forward_hooks(model, {name: _counter(calls, name) for name in layers}) if batch == 0 \
                else nullcontext()
            with counting:
                output = model.module(inputs.to(device))
            probabilities.append(torch.softmax(output.float(), dim=1).cpu())
            for name in layers:
                accumulators[name].add(seen[name], indices, calls[name])
            if keep_inputs:
                kept.append(inputs.clone())
    inputs = torch.cat(kept) if keep_inputs else None
    kept_by_index = {i: inputs[i] for i in range(len(paths))} if inputs is not None else {}
    scan = Scan(paths, torch.cat(probabilities), inputs)
    scan.layers = {name: accumulators[name].finish(paths, kept_by_index) for name in layers}
    scan.seconds = time.perf_counter() - start
    return scan


def _counter(calls: dict[str, int], name: str):
    def hook(module, args, output) -> None:
        calls[name] += 1

    return hook
