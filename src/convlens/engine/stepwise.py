"""The step engine: many sequences of inputs, each input differing from the one before it in a few pixels
anywhere in the image (the deletion and insertion games), with only the changed positions recomputed.

Every sequence keeps the output of every graph node for its current input. ``reset(inputs)`` runs the traced
graph in full on the sequences' first inputs. ``advance(n, y, x, pixels)`` sets pixel ``(y[p], x[p])`` of
sequence ``n[p]`` to ``pixels[p]`` and brings every node up to date: a local node (convolution, pooling,
pointwise op; ``engine/ops.py``) recomputes only the output positions whose window reads a changed value, from
its sources' current maps, and writes them into its own map; any other node, or a local one where most
positions changed, runs in full on the batch. Unlike the regional engine (one rectangle per variant, batched
over variants from one clean input) the changed set here is any set of positions, and a step starts from the
previous step of its own sequence, so steps run one after another while sequences run side by side.

Values are exact up to float rounding: each recomputed position is computed by the op itself from the current
values (a convolution as one matrix product of its window, the others by the module on the window), never as a
difference added to an old value, so rounding does not build up along a sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

from convlens.engine.batched import model_output
from convlens.engine.ops import LocalOp, NotTraceable, local_op, mutates, run_node, trace

# Above this share of a map's positions changed, a local node runs in full (gathering windows costs more).
DENSE_FRACTION = 0.35


@dataclass
class _Plan:
    """How a local node is recomputed at a set of positions."""

    op: LocalOp
    window: bool  # reads a window of its single source (else pointwise: the same position of each source)
    weight: torch.Tensor | None = None  # convolutions (one group): O x (kh * kw * C), window order
    bias: torch.Tensor | None = None


@dataclass
class _Change:
    """Where a node's map changed in a step: a mask (``N x H x W``) and its positions, in order."""

    mask: torch.Tensor
    n: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor

    @classmethod
    def of(cls, mask: torch.Tensor) -> _Change:
        return cls(mask, *mask.nonzero(as_tuple=True))


class StepEngine:
    """Build inside ``torch.inference_mode()`` and ``hooks.preserved_state`` (eval mode); ``NotTraceable`` with
    the reason when the model's graph cannot be used (then run the plain batched loop). The engine starts with
    one sequence at ``sample`` (``1 x C x H x W``); ``reset`` starts others."""

    name = "stepwise"

    def __init__(self, net: nn.Module, sample: torch.Tensor) -> None:
        self.net = net
        graph = trace(net)
        self.modules = dict(net.named_modules())
        self.nodes = list(graph.nodes)
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise NotTraceable(f"the traced graph takes {len(placeholders)} inputs, not one")
        self.input_node = placeholders[0]
        self.dependent: dict[fx.Node, bool] = {}
        for node in self.nodes:
            self.dependent[node] = node.op == "placeholder" or any(self.dependent[a] for a in node.all_input_nodes)
        values = self._first_pass(sample[:1])
        direct = model_output(net(sample[:1].contiguous(memory_format=self.format)))
        mine = model_output(self._output(values))
        scale = max(1.0, float(direct.abs().max()))
        if direct.shape != mine.shape or not torch.allclose(direct, mine, rtol=1e-4, atol=1e-5 * scale):
            raise NotTraceable("the traced graph does not reproduce the model's output")
        self.constants = {n: v for n, v in values.items() if not self.dependent[n]}
        self.plans = {n: self._plan(n, op) for n in self.nodes if self.dependent[n]
                      and (op := local_op(n, values, self.dependent, self.modules, self._run)) is not None}
        if not any(self.input_node in p.op.sources for p in self.plans.values()):
            raise NotTraceable("no local operation (convolution, pooling, pointwise) reads the input")
        self.costs = {n: _cost(self.modules.get(n.target) if n.op == "call_module" else None, v)
                      for n, v in values.items() if self.dependent[n] and isinstance(v, torch.Tensor)}
        self.last_work = 1.0  # the share of a full pass's work the last step did (by multiply-adds, roughly)
        self.per_sequence_bytes = sum(v.numel() * v.element_size() for n, v in values.items()
                                      if self.dependent[n] and isinstance(v, torch.Tensor))
        # The sample is the one sequence the engine starts with (``reset`` starts others).
        self.state: dict[fx.Node, object] = {**self.constants, **{n: v for n, v in values.items() if self.dependent[n]}}
        # Positions recomputed but not yet written into a node's map: written when something reads the map (a
        # window, a full run), skipped while the only reader takes the fresh values (conv -> batch norm -> ReLU).
        self._pending: dict[fx.Node, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def _first_pass(self, sample: torch.Tensor) -> dict[fx.Node, object]:
        """The graph on one input, its maps channels-last where the model allows (a position's channels then lie
        together, which every gather and write reads), else in the default layout; ``NotTraceable`` when the
        graph fails both ways (the plain loop then runs the model and reports any real error)."""
        failure = ""
        for memory_format in (torch.channels_last, torch.contiguous_format):
            self.format = memory_format
            try:
                return self._full_pass(sample)
            except Exception as error:  # noqa: BLE001 - e.g. x.view(...) after a convolution in channels-last
                failure = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:160]}"
        raise NotTraceable(f"the traced graph fails to run ({failure})")

    # -- planning --

    def _run(self, node: fx.Node, args, kwargs):
        return run_node(self.net, self.modules, node, args, kwargs)

    def _plan(self, node: fx.Node, op: LocalOp) -> _Plan:
        module = self.modules.get(node.target) if node.op == "call_module" else None
        window = any(g.kernel > 1 or g.stride > 1 or g.pad_lo or g.pad_hi for g in op.geometry) or \
            isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))
        if isinstance(module, nn.Conv2d) and module.groups == 1:
            # The window gathered channels-last: rows, columns, channels; the weight laid out the same way.
            weight = module.weight.detach().permute(0, 2, 3, 1).reshape(module.out_channels, -1)
            bias = None if module.bias is None else module.bias.detach()
            return _Plan(op, True, weight.t().contiguous(), bias)
        return _Plan(op, window)

    # -- full passes --

    def _full_pass(self, inputs: torch.Tensor) -> dict[fx.Node, object]:
        values: dict[fx.Node, object] = {}
        for node in self.nodes:
            if node.op == "placeholder":
                values[node] = inputs.contiguous(memory_format=self.format)
            elif node.op != "output":
                values[node] = self._run_full(node, values)
        return values

    def _run_full(self, node: fx.Node, values: dict) -> object:
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: values[n])
        if mutates(node, self.modules):  # keep every stored map intact
            args, kwargs = fx.node.map_aggregate((args, kwargs),
                                                 lambda v: v.clone() if isinstance(v, torch.Tensor) else v)
        out = self._run(node, args, kwargs)
        if isinstance(out, torch.Tensor) and self.dependent[node]:
            sources = [values[a] for a in node.all_input_nodes if isinstance(values[a], torch.Tensor)]
            if any(out.untyped_storage().data_ptr() == s.untyped_storage().data_ptr() for s in sources):
                out = out.clone()  # its own map: positions are written into it later
        return out

    def _output(self, values: dict):
        output = next(n for n in self.nodes if n.op == "output")
        return fx.node.map_arg(output.args[0], lambda n: values[n])

    def reset(self, inputs: torch.Tensor) -> torch.Tensor:
        """Start ``len(inputs)`` sequences at these inputs; the model's output for them."""
        self.state = {**self.constants, **{n: v for n, v in self._full_pass(inputs).items() if self.dependent[n]}}
        self._pending: dict[fx.Node, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        return model_output(self._output(self.state))

    # -- steps --

    def advance(self, n: torch.Tensor, y: torch.Tensor, x: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Set pixel ``(y[p], x[p])`` of sequence ``n[p]`` to ``pixels[p]`` (``P x C``) in every sequence's
        current input; the model's output for the new inputs."""
        state = self.state
        inputs = state[self.input_node]
        # Per node: the positions that changed, None (anything may have), False (nothing did).
        changed: dict[fx.Node, _Change | bool | None] = {}
        mask = torch.zeros((inputs.shape[0], *inputs.shape[-2:]), dtype=torch.bool, device=inputs.device)
        mask[n, y, x] = True
        inputs.permute(0, 2, 3, 1)[n, y, x] = pixels.to(inputs.dtype)
        changed[self.input_node] = _Change.of(mask) if len(n) else False
        self._fresh: dict[fx.Node, tuple[_Change, torch.Tensor]] = {}  # values recomputed in this step
        work = 0.0
        for node in self.nodes:
            if not self.dependent[node] or node is self.input_node or node.op == "output":
                continue
            sources = [a for a in node.all_input_nodes if self.dependent[a]]
            if all(changed[s] is False for s in sources):
                changed[node] = False  # nothing it reads changed
                continue
            plan = self.plans.get(node)
            change = None if plan is None else self._changed(node, plan, [changed[s] for s in plan.op.sources])
            if change is not None and not len(change.n):
                change = False  # the changes it reads do not reach any of its positions
            elif change is not None and len(change.n) <= DENSE_FRACTION * change.mask.numel():
                self._recompute(node, plan, change)
                work += self.costs.get(node, 0.0) * len(change.n) / change.mask.numel()
            else:
                for source in sources:
                    self._flush(source)
                state[node] = self._run_full(node, state)
                self._pending.pop(node, None)
                work += self.costs.get(node, 0.0)
            changed[node] = change
        self.last_work = work / max(1e-12, sum(self.costs.values()))
        output = next(n for n in self.nodes if n.op == "output")
        for source in output.all_input_nodes:
            self._flush(source)
        return model_output(self._output(state))

    def _flush(self, node: fx.Node) -> None:
        """Write the node's pending positions into its map, oldest first."""
        target = self.state.get(node)
        for flat, values in self._pending.pop(node, ()):
            _pixels(target).index_copy_(0, flat, values)

    def _changed(self, node: fx.Node, plan: _Plan, changes: list) -> _Change | None:
        """Output positions that read a changed value (None: unknown)."""
        if any(c is None for c in changes):
            return None
        changes = [c for c in changes if c is not False]
        if not plan.window:
            if len(changes) == 1:
                return changes[0]
            return _Change.of(torch.stack([c.mask for c in changes]).any(0))
        (rows, cols), change = plan.op.geometry, changes[0]
        out = self.state[node]
        height, width = out.shape[-2:]
        oy, row_ok = _reach(change.y, rows, height)
        ox, col_ok = _reach(change.x, cols, width)
        # Windows that do not exist are written into a spare row and column, cut off after.
        mask = torch.zeros((out.shape[0], height + 1, width + 1), dtype=torch.bool, device=out.device)
        mask[change.n[:, None, None], torch.where(row_ok, oy, height)[:, :, None],
             torch.where(col_ok, ox, width)[:, None, :]] = True
        return _Change.of(mask[:, :height, :width])

    def _recompute(self, node: fx.Node, plan: _Plan, change: _Change) -> None:
        n, oy, ox = change.n, change.y, change.x
        for source in plan.op.sources:
            if not (source in self._fresh and self._fresh[source][0] is change):
                self._flush(source)  # read from its map
        sources = [self.state[s] for s in plan.op.sources]
        if plan.window:
            values = self._window(plan, sources[0], n, oy, ox)
        else:
            flat = (n * change.mask.shape[1] + oy) * change.mask.shape[2] + ox
            points = [self._fresh[s][1] if s in self._fresh and self._fresh[s][0] is change else
                      _pixels(value).index_select(0, flat) for s, value in zip(plan.op.sources, sources, strict=True)]
            if mutates(node, self.modules):  # x += y, ReLU(inplace=True): the fresh values are another node's
                points = [p.clone() for p in points]
            points = [p[:, :, None, None] for p in points]
            values = plan.op.apply(points).flatten(1)
        target = self.state[node]
        values = values.to(target.dtype)
        self._fresh[node] = (change, values)
        if _is_channels_last(target):
            pending = self._pending.setdefault(node, [])
            pending.append(((n * target.shape[2] + oy) * target.shape[3] + ox, values))
            if sum(len(f) for f, _ in pending) > target.shape[0] * target.shape[2] * target.shape[3]:
                self._flush(node)  # more pending than the map holds: write it
        else:
            target.permute(0, 2, 3, 1)[n, oy, ox] = values

    def _window(self, plan: _Plan, source: torch.Tensor, n: torch.Tensor, oy: torch.Tensor,
                ox: torch.Tensor) -> torch.Tensor:
        """The op at output positions ``(n, oy, ox)``: ``P x channels``."""
        rows, cols = plan.op.geometry
        height, width = source.shape[-2:]
        device = n.device
        taps = plan.weight is not None  # a convolution reads only its taps; the other ops get the whole window
        row_taps = torch.arange(0, rows.reach + 1, rows.dilation if taps else 1, device=device)
        col_taps = torch.arange(0, cols.reach + 1, cols.dilation if taps else 1, device=device)
        top, left = oy * rows.stride - rows.pad_lo, ox * cols.stride - cols.pad_lo
        # Index of every tap: the window's first pixel plus a fixed offset, except for windows over the border.
        flat = ((n * height + top) * width + left)[:, None] + (row_taps[:, None] * width + col_taps).flatten()
        border = ((top < 0) | (top + rows.reach >= height) | (left < 0) | (left + cols.reach >= width)).nonzero()[:, 0]
        if len(border):
            row, col = top[border, None] + row_taps, left[border, None] + col_taps
            flat[border] = ((n[border, None, None] * height + row.clamp(0, height - 1)[:, :, None]) * width
                            + col.clamp(0, width - 1)[:, None, :]).flatten(1)
        window = _pixels(source).index_select(0, flat.flatten()).view(len(n), len(row_taps), len(col_taps), -1)
        if len(border) and (rows.pad_lo or rows.pad_hi or cols.pad_lo or cols.pad_hi):  # padding, not pixels
            outside = ~(((row >= 0) & (row < height))[:, :, None] & ((col >= 0) & (col < width))[:, None, :])
            window[border] = window[border].masked_fill(outside[..., None], plan.op.pad_value)
        if not taps:
            return plan.op.apply([window.permute(0, 3, 1, 2)]).flatten(1)
        window = window.view(len(n), -1)
        return window @ plan.weight if plan.bias is None else torch.addmm(plan.bias, window, plan.weight)


def _cost(module: nn.Module | None, value: torch.Tensor) -> float:
    """Multiply-adds of a node for one sequence, roughly: a layer's weights per output value, else one."""
    per_value = 1.0
    if isinstance(module, nn.Conv2d):
        per_value = module.weight[0].numel()
    elif isinstance(module, nn.Linear):
        per_value = module.in_features
    return float(value[0].numel()) * per_value


def _reach(coordinate: torch.Tensor, geometry, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Along one axis, the output coordinates whose window reads input ``coordinate`` (``P x D``) and which of
    them exist (``P x D`` booleans)."""
    last = (coordinate + geometry.pad_lo) // geometry.stride  # the last window starting at or before it
    out = last[:, None] - torch.arange(geometry.reach // geometry.stride + 1, device=coordinate.device)
    ok = (out >= 0) & (out < size) & (out * geometry.stride - geometry.pad_lo + geometry.reach >= coordinate[:, None])
    return out, ok


def _is_channels_last(value: torch.Tensor) -> bool:
    return value.is_contiguous(memory_format=torch.channels_last)


def _pixels(value: torch.Tensor) -> torch.Tensor:
    """``(N * H * W) x C``: one row per position (a view of a channels-last map, else a copy)."""
    return value.permute(0, 2, 3, 1).reshape(-1, value.shape[1])
