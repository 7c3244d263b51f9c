"""The region-recomputation engine: evaluate many variants of one input that differ from it in known rectangles,
recomputing only what each rectangle can change.

Occlusion uses it for its windows; any method whose variants are "the clean input with a rectangle replaced"
can too (RISE-like cells, deletion/insertion in square patches). The interface::

    from convlens.engine import Regions, build_engine

    regions = Regions.windows(row_origins, col_origins, size, fill)   # or Regions(row_lo, row_hi, ...)
    with preserved_state(model) as net, torch.inference_mode():
        engine = build_engine(net, inputs, regions, layer="layer2")  # layer: optional, read per variant
        engine.clean_output, engine.clean_layer                      # the clean pass, run once
        rows, cols = regions.grid(engine.device)                     # every variant, row-major
        output, layer = engine.run(rows[:64], cols[:64], channel=3)  # a batch of variants

- ``Regions``: variant ``(i, j)`` is the input with rows ``row_lo[i]..row_hi[i]`` and columns
  ``col_lo[j]..col_hi[j]`` taken from ``fill`` (separable: rows depend on ``i`` only, columns on ``j`` only).
  ``Regions.variants`` builds the full inputs, ``coverage`` sums per-variant values over the pixels each covers.
- ``build_engine`` traces the model with ``torch.fx`` (``layer`` kept as one node) and plans, for every node
  whose change stays within half of its map, a recomputation on the changed region only (``RegionalEngine``,
  name ``"incremental"``). When that is impossible it returns the plain ``BatchedEngine`` (every variant as a
  full input) with ``reason`` saying why: the model does not trace, the graph does not reproduce the model's
  output, the layer is hidden inside a traced leaf, or nothing local follows the input. ``incremental=False``
  asks for the plain engine. ``fold=True`` (the default) runs a copy of the traced model with fewer passes over
  the maps (``engine/inference.py``, ``engine/fusion.py``): batch norms folded into the convolutions before
  them and, on the CPU, ReLUs (and the residual additions before them) fused into the convolutions (one oneDNN
  call, bit-exact); the layer read is kept as it is, and the copy must reproduce the model's output on the clean
  input, else the model's own graph is used. Profile on resnet50 (224 px, window 32, stride 16, 2 threads): the
  whole maps from layer3.1 on (every window changes them) are ~80 % of the run; folding and fusing cut the
  regional nodes from 93 to 30 and the run by ~15 %.
- Both engines: ``name``, ``reason`` ("" when incremental), ``incremental_nodes`` (graph nodes computed on
  regions), ``clean_output``, ``clean_layer``, ``device``, ``format`` (memory format of the batches),
  ``per_sample_bytes`` (what one variant costs in memory, for ``convlens.perturbation.auto_batch_size``), and
  ``run(row_index, col_index, channel=None) -> (output, layer output or None)``.

``build_suffix(net, inputs, layer)`` runs the model from a layer's output onward (``engine/suffix.py``): the
traced graph after the layer, fed replacements of the layer's output and the cached clean tensors the rest of
the model reads (skip connections that bypass the layer), or the whole model with a hook (``WholeModel``, with
``reason``) where that cannot be proved. ``suffix.run(layer_values, owners)`` gives the model's output.

``StepEngine(net, sample)`` (``engine/stepwise.py``) runs many sequences of inputs, each a few scattered pixels
from the one before (the deletion and insertion games): ``reset(inputs)``, then ``advance(n, y, x, pixels)``
per step, recomputing only the positions the changed pixels reach.

Results are exact up to float rounding: the regional engine computes each op as the model does, on a region
that holds every value the variant can change. Build and run the engines inside ``torch.inference_mode()`` and
``hooks.preserved_state`` (the caller holds both for the engine's life).
"""

from __future__ import annotations

import torch
from torch import nn

from convlens.engine.batched import ACTIVATION_COPIES, BatchedEngine, forward_measured, model_output
from convlens.engine.inference import inference_graph
from convlens.engine.ops import NotTraceable, trace
from convlens.engine.regional import MAX_REGION_FRACTION, RegionalEngine
from convlens.engine.regions import Regions, inside
from convlens.engine.stepwise import StepEngine
from convlens.engine.suffix import Suffix, SuffixEngine, WholeModel, build_suffix

Engine = RegionalEngine | BatchedEngine


def build_engine(net: nn.Module, inputs: torch.Tensor, regions: Regions, layer: str | None = None,
                 incremental: bool = True, fold: bool = True) -> Engine:
    """The regional engine where the model allows it, else the batched one with the reason recorded."""
    if not incremental:
        return BatchedEngine(net, inputs, regions, layer, reason="incremental=False")
    try:
        graph = trace(net, layer)
        optimized = inference_graph(net, graph, layer, fuse=inputs.device.type == "cpu") if fold else None
        if optimized is not None:  # fewer passes over the maps: batch norms folded, ReLUs fused
            reference = model_output(net(inputs))
            try:
                return RegionalEngine(optimized, optimized.graph, inputs, regions, layer, reference=reference)
            except NotTraceable:  # the folded copy does not reproduce the model (or fails): the model's own graph
                pass
            return RegionalEngine(net, graph, inputs, regions, layer, reference=reference)
        return RegionalEngine(net, graph, inputs, regions, layer)
    except NotTraceable as why:
        return BatchedEngine(net, inputs, regions, layer, reason=str(why))


__all__ = [
    "ACTIVATION_COPIES",
    "MAX_REGION_FRACTION",
    "BatchedEngine",
    "Engine",
    "NotTraceable",
    "RegionalEngine",
    "Regions",
    "StepEngine",
    "Suffix",
    "SuffixEngine",
    "WholeModel",
    "build_engine",
    "build_suffix",
    "forward_measured",
    "inside",
    "model_output",
    "trace",
]
