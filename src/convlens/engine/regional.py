"""The regional engine: recompute, for each variant, only the part of the network its rectangle can change.

The traced graph runs once on the clean input. Every node whose output depends on the input is then either
"regional" (a local op whose inputs are regional and whose changed region stays small) or "full". A regional
node is computed, for each variant, only on its box: a rectangle of fixed size, placed per variant, that holds
every value the variant can change there. To compute it, the op reads the region it needs from its input's
clean map (padded as the op pads) with the input's box written over it, and runs without padding. A full node
runs on the batch as usual; where it reads a regional node, that node's box is pasted into its clean output.
Geometry is separable: rows depend only on a variant's row index, columns only on its column index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from convlens.engine.batched import ACTIVATION_COPIES, model_output
from convlens.engine.ops import Box, LocalOp, NotTraceable, last_uses, local_op, mutates, run_node
from convlens.engine.regions import Regions, fit, gather, hull, scatter
from convlens.errors import ConvlensError
from convlens.models.loading import preferred_memory_format


def agrees(output: torch.Tensor, expected: torch.Tensor) -> bool:
    """The traced (maybe folded) graph's output against the model's: float rounding only (the tolerance grows with
    the logits' scale, as folding a batch norm rescales a convolution's rounding)."""
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    return output.shape == expected.shape and torch.allclose(output, expected, rtol=1e-4, atol=1e-5 * scale)


# Above this share of a feature map, recomputing a region costs about as much as the whole map: paste instead.
MAX_REGION_FRACTION = 0.5


@dataclass
class _Read:
    """How a regional node reads one regional source: a region of the source's clean map (padded as the op pads),
    with the source's box for the same variant written over it. ``None`` in ``RegionalEngine.reads`` when the
    region is exactly the source's box (pointwise ops): then the box is read as it is."""

    clean: torch.Tensor  # 1 x C x H' x W': the source's clean map, padded
    rows: torch.Tensor  # row indices x R: rows of ``clean`` to read
    cols: torch.Tensor  # column indices x Cc
    margins: tuple[int, int, int, int]  # top, bottom, left, right: room for box parts outside the region
    box_rows: torch.Tensor  # row indices x box rows: where the box rows go, margins included
    box_cols: torch.Tensor


class RegionalEngine:
    """Variants run region by region where the graph allows. Build it inside ``torch.inference_mode()`` and
    ``hooks.preserved_state``; ``NotTraceable`` (with the reason) when the graph cannot be used."""

    name = "incremental"
    reason = ""

    def __init__(self, net: nn.Module, graph: fx.Graph, inputs: torch.Tensor, regions: Regions,
                 layer: str | None = None, reference: torch.Tensor | None = None) -> None:
        # reference: the model's own output on ``inputs`` when the caller has it (``net`` may be a folded copy
        # of the model); else ``net``'s output, computed here. The traced graph must reproduce it.
        self.net, self.inputs, self.regions, self.reference = net, inputs, regions, reference
        self.device = inputs.device
        self.modules = dict(net.named_modules())
        self.nodes = list(graph.nodes)
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise NotTraceable(f"the traced graph takes {len(placeholders)} inputs, not one")
        # A module called several times (torchvision ResNet's shared relu): its last call, as hooks see it.
        calls = [n for n in self.nodes if n.op == "call_module" and n.target == layer]
        self.layer_node = calls[-1] if calls else None
        if layer is not None and self.layer_node is None:
            raise NotTraceable(f"layer {layer!r} is not a module call of the traced graph")
        self.input_node = placeholders[0]
        values = self._clean_pass_in_some_format()
        self.dependent = self._input_dependent()
        self.local = {n: op for n in self.nodes if self.dependent[n] and (op := self._local_op(n, values))}
        self.regional = self._plan_regions(values)
        self.incremental_nodes = len(self.regional) - 1
        if not self.incremental_nodes:
            raise NotTraceable("no local operation (convolution, pooling, pointwise) follows the input with a "
                               "change small enough to recompute on regions")
        self.boxes = {n: Box(*fit(lo_r, hi_r, values[n].shape[-2]), *fit(lo_c, hi_c, values[n].shape[-1]))
                      for n, (lo_r, hi_r, lo_c, hi_c) in self.regional.items()}
        self.box_rows = {n: self._table(b.row_origin, b.row_length) for n, b in self.boxes.items()}
        self.box_cols = {n: self._table(b.col_origin, b.col_length) for n, b in self.boxes.items()}
        self._plan_input_patches()
        self.reads = {(n, s): self._plan_read(n, s, values) for n in self.regional if n is not self.input_node
                      for s in self.local[n].sources}
        self.copies = {(n, s) for (n, s), read in self.reads.items() if read is None and mutates(n, self.modules)
                       and (len(s.users) > 1 or s is self.layer_node)}
        # Keep only what the batched runs read: constants, and the clean maps that boxes are pasted into.
        pasted = {n for n in self.regional if any(u not in self.regional for u in n.users)} | {self.layer_node}
        self.clean = {n: v for n, v in values.items() if not self.dependent[n] or n in pasted}
        self.last_use = last_uses(self.nodes)
        full_bytes = [v.numel() * v.element_size() for n, v in values.items()
                      if self.dependent[n] and n not in self.regional and isinstance(v, torch.Tensor)]
        self.per_sample_bytes = ACTIVATION_COPIES * max(full_bytes, default=inputs.numel() * inputs.element_size())
        # Held for the engine's life, whatever the batch: the clean maps pasted into and the padded maps read.
        kept = [v for n, v in self.clean.items() if self.dependent[n] and isinstance(v, torch.Tensor)]
        kept += [r.clean for r in self.reads.values() if r is not None]
        self.kept_bytes = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in kept}.values())

    def _plan_input_patches(self) -> None:
        """The input's box holds each variant's rectangle; where a rectangle is smaller than the box (cropped
        windows at a border), the rest of the box keeps the clean input."""
        rows, cols = self.box_rows[self.input_node], self.box_cols[self.input_node]
        lo_r, hi_r, lo_c, hi_c = (torch.as_tensor(v, device=self.device) for v in
                                  (self.regions.row_lo, self.regions.row_hi, self.regions.col_lo, self.regions.col_hi))
        self.row_inside = (rows >= lo_r[:, None]) & (rows <= hi_r[:, None])
        self.col_inside = (cols >= lo_c[:, None]) & (cols <= hi_c[:, None])
        self.whole_boxes = bool(self.row_inside.all() and self.col_inside.all())
        self.fill = self.regions.fill.to(self.device).contiguous(memory_format=torch.channels_last)
        self.clean_input = self.inputs.contiguous(memory_format=torch.channels_last)

    def _input_patch(self, row_index: torch.Tensor, col_index: torch.Tensor) -> torch.Tensor:
        rows, cols = self.box_rows[self.input_node][row_index], self.box_cols[self.input_node][col_index]
        patch = gather(self.fill, rows, cols)
        if self.whole_boxes:
            return patch
        inside = self.row_inside[row_index][:, None, :, None] & self.col_inside[col_index][:, None, None, :]
        return torch.where(inside, patch, gather(self.clean_input, rows, cols))

    # -- the clean pass and the plan --

    def _run(self, node: fx.Node, args, kwargs):
        return run_node(self.net, self.modules, node, args, kwargs)

    def _clean_pass_in_some_format(self) -> dict[fx.Node, object]:
        """The clean pass in the preferred memory format, else contiguous (a model may ``view`` a conv output);
        a graph that fails both ways leaves the model to the batched engine (which reports any real error)."""
        failure = ""
        for memory_format in dict.fromkeys((preferred_memory_format(self.device), torch.contiguous_format)):
            self.format = memory_format
            try:
                return self._clean_pass()
            except (ConvlensError, NotTraceable):
                raise
            except Exception as error:  # noqa: BLE001 - try the next format, then give up on the graph
                failure = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:160]}"
        raise NotTraceable(f"the traced graph fails to run ({failure})")

    def _clean_pass(self) -> dict[fx.Node, object]:
        values: dict[fx.Node, object] = {}
        for node in self.nodes:
            if node.op == "placeholder":
                values[node] = self.inputs.contiguous(memory_format=self.format)
            elif node.op == "output":
                self.clean_output = model_output(fx.node.map_arg(node.args[0], lambda n: values[n]))
            else:
                args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: values[n])
                if mutates(node, self.modules):  # keep every stored clean value intact
                    args, kwargs = fx.node.map_aggregate(
                        (args, kwargs), lambda v: v.clone() if isinstance(v, torch.Tensor) else v)
                values[node] = self._run(node, args, kwargs)
        # The traced graph must compute what the model computes; anything else runs the plain batched way.
        direct = model_output(self.net(self.inputs)) if self.reference is None else self.reference
        if not agrees(self.clean_output, direct):
            raise NotTraceable("the traced graph does not reproduce the model's output on the clean input")
        self.clean_layer = None if self.layer_node is None else values[self.layer_node]
        if self.layer_node is not None and not isinstance(self.clean_layer, torch.Tensor):
            raise NotTraceable("the layer's output in the traced graph is not one tensor")
        return values

    def _input_dependent(self) -> dict[fx.Node, bool]:
        dependent = {}
        for node in self.nodes:
            dependent[node] = node.op == "placeholder" or any(dependent[a] for a in node.all_input_nodes)
        return dependent

    def _local_op(self, node: fx.Node, values: dict) -> LocalOp | None:
        return local_op(node, values, self.dependent, self.modules, self._run)

    def _plan_regions(self, values: dict) -> dict[fx.Node, tuple]:
        """Regional nodes and, per axis, the interval each variant can change: ``{node: (rlo, rhi, clo, chi)}``."""
        regions = self.regions
        changed = {self.input_node: (regions.row_lo, regions.row_hi, regions.col_lo, regions.col_hi)}
        for node in self.nodes:
            op = self.local.get(node)
            if op is None or any(s not in changed for s in op.sources):
                continue
            out_h, out_w = values[node].shape[-2:]
            intervals = []
            for source in op.sources:
                (rlo, rhi, clo, chi), (rows, cols) = changed[source], op.geometry_of(source)
                intervals.append((*rows.changed(rlo, rhi, out_h), *cols.changed(clo, chi, out_w)))
            rlo, rhi, clo, chi = hull(intervals)
            extent = (max(0, (rhi - rlo).max() + 1) / out_h) * (max(0, (chi - clo).max() + 1) / out_w)
            if extent <= MAX_REGION_FRACTION:
                changed[node] = (rlo, rhi, clo, chi)
        return changed

    def _table(self, start: np.ndarray, length: int) -> torch.Tensor:
        """``start[i] + arange(length)`` for every row (or column) index ``i``, as an index tensor on the device."""
        return torch.as_tensor(start[:, None] + np.arange(length)[None, :], device=self.device)

    def _plan_read(self, node: fx.Node, source: fx.Node, values: dict) -> _Read | None:
        op, box, source_box = self.local[node], self.boxes[node], self.boxes[source]
        rows, cols = op.geometry_of(source)
        row_start, row_length = rows.reads(box.row_origin, box.row_length)
        col_start, col_length = cols.reads(box.col_origin, box.col_length)
        padded = rows.pad_lo or rows.pad_hi or cols.pad_lo or cols.pad_hi
        if (not padded and np.array_equal(row_start, source_box.row_origin) and row_length == source_box.row_length
                and np.array_equal(col_start, source_box.col_origin) and col_length == source_box.col_length):
            return None
        clean = values[source]
        if padded:
            clean = F.pad(clean, (cols.pad_lo, cols.pad_hi, rows.pad_lo, rows.pad_hi), value=op.pad_value)
        clean = clean.contiguous(memory_format=torch.channels_last)  # each gathered pixel: one contiguous vector
        # Where the source's box lands in the region; margins hold the parts of it that fall outside.
        row_offset, col_offset = source_box.row_origin - row_start, source_box.col_origin - col_start
        top, bottom = max(0, -row_offset.min()), max(0, (row_offset + source_box.row_length - row_length).max())
        left, right = max(0, -col_offset.min()), max(0, (col_offset + source_box.col_length - col_length).max())
        return _Read(clean, self._table(row_start + rows.pad_lo, row_length),
                     self._table(col_start + cols.pad_lo, col_length), (int(top), int(bottom), int(left), int(right)),
                     self._table(row_offset + top, source_box.row_length),
                     self._table(col_offset + left, source_box.col_length))


    # -- one batch of variants --

    def run(self, row_index: torch.Tensor, col_index: torch.Tensor,
            channel: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The model's output for variants ``(row_index[b], col_index[b])`` and the layer's output for them
        (only channel ``channel`` when given, kept as a dimension of 1; None without a layer)."""
        patches: dict[fx.Node, torch.Tensor] = {}
        full: dict[fx.Node, torch.Tensor] = {}
        layer = output = None
        channels = slice(None) if channel is None else slice(channel, channel + 1)

        def value(node: fx.Node):
            if not self.dependent[node]:
                return self.clean[node]
            if node not in full:
                full[node] = self._paste(node, patches[node], row_index, col_index)
            return full[node]

        for node in self.nodes:
            if not self.dependent[node]:
                continue
            if node.op == "output":
                output = model_output(fx.node.map_arg(node.args[0], value))
            elif node is self.input_node:  # the box holds the variant's rectangle
                patches[node] = self._input_patch(row_index, col_index)
            elif node in self.regional:
                patches[node] = self._patch(node, patches, row_index, col_index)
            else:
                args, kwargs = fx.node.map_arg((node.args, node.kwargs), value)
                full[node] = self._run(node, args, kwargs)
            if node is self.layer_node:
                if node in self.regional:
                    layer = self._paste(node, patches[node][:, channels], row_index, col_index, channels)
                else:
                    layer = full[node][:, channels]
            for done in self.last_use.get(node, ()):
                patches.pop(done, None)
                full.pop(done, None)
        return output, layer

    def _patch(self, node: fx.Node, patches: dict, row_index: torch.Tensor, col_index: torch.Tensor) -> torch.Tensor:
        op = self.local[node]
        regions = []
        for source in op.sources:
            read = self.reads[node, source]
            if read is None:  # the region is the source's box: read it as is (a copy if an in-place op would
                # change a box that something else still reads)
                regions.append(patches[source].clone() if (node, source) in self.copies else patches[source])
                continue
            region = gather(read.clean, read.rows[row_index], read.cols[col_index])
            top, bottom, left, right = read.margins
            if any(read.margins):
                region = F.pad(region, (left, right, top, bottom))
            scatter(region, read.box_rows[row_index], read.box_cols[col_index], patches[source])
            if any(read.margins):
                region = region[:, :, top:region.shape[2] - bottom, left:region.shape[3] - right]
            regions.append(region)
        return op.apply(regions)

    def _paste(self, node: fx.Node, patch: torch.Tensor, row_index: torch.Tensor, col_index: torch.Tensor,
               channels: slice = slice(None)) -> torch.Tensor:
        """The node's clean output (``channels`` of it) for every variant, with that variant's box written in."""
        clean = self.clean[node][:, channels]
        out = torch.empty((len(row_index), *clean.shape[1:]), dtype=clean.dtype, device=clean.device,
                          memory_format=self.format)
        out.copy_(clean.expand_as(out))  # a new tensor: the clean map stays as it is
        scatter(out, self.box_rows[node][row_index], self.box_cols[node][col_index], patch)
        return out


