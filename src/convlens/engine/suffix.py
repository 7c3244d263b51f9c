"""Suffix execution: run a model from one layer's output onward, for many replacements of that output.

Ablation-CAM (and any method that edits a layer's output and reads the model's output) runs the model once per
edited copy. Only the part of the graph downstream of the layer can change; everything else (the input, the
layers before, a skip connection that bypasses the layer) is the same for every copy. The traced fx graph
proves which nodes those are: the suffix is the layer node's descendants, and every other tensor a suffix
node reads is taken from one cached clean pass (per image, gathered for each copy by its owner image).

``build_suffix`` returns the ``SuffixEngine`` (name ``"suffix"``) when the graph traces, reproduces the model
and the suffix, run on the clean layer output, reproduces the clean model output; otherwise ``WholeModel``
(name ``"whole-model"``) with ``reason`` saying why: every copy then runs the whole model with the layer's
output replaced by a hook. Build and run inside ``torch.inference_mode()`` and ``hooks.preserved_state``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import fx, nn

from convlens.engine.batched import model_output
from convlens.engine.ops import NotTraceable, last_uses, mutates, run_node, trace
from convlens.hooks import capture, forward_hooks, replace_in_output
from convlens.models.loading import preferred_memory_format


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:160]}"


class SuffixEngine:
    """The graph after ``layer``, fed with replacements of the layer's output and the cached clean tensors the
    rest of the model reads. ``NotTraceable`` (with the reason) when that cannot be proved on this model."""

    name = "suffix"
    reason = ""

    def __init__(self, net: nn.Module, graph: fx.Graph, inputs: torch.Tensor, layer: str,
                 agrees: Callable[[torch.Tensor], bool] | None = None,
                 clean_layer: torch.Tensor | None = None) -> None:
        self.net, self.inputs, self.layer = net, inputs, layer
        self.modules = dict(net.named_modules())
        self.format = preferred_memory_format(inputs.device)
        nodes = list(graph.nodes)
        placeholders = [n for n in nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise NotTraceable(f"the traced graph takes {len(placeholders)} inputs, not one")
        # A module called several times (torchvision ResNet's shared relu): its last call, as hooks see it.
        calls = [n for n in nodes if n.op == "call_module" and n.target == layer]
        if not calls:
            raise NotTraceable(f"layer {layer!r} is not a module call of the traced graph (inside a traced leaf?)")
        self.calls = len(calls)
        self.layer_node = calls[-1]
        downstream = {self.layer_node}
        for node in nodes:
            if any(a in downstream for a in node.all_input_nodes):
                downstream.add(node)
        output = nodes[-1]
        if output.op != "output" or output not in downstream:
            raise NotTraceable(f"the model's output does not depend on layer {layer!r}")
        self.suffix = [n for n in nodes if n in downstream and n is not self.layer_node]
        read = {a for n in self.suffix for a in n.all_input_nodes if a not in downstream}
        if clean_layer is None:
            self.cached, clean_output, self.clean_layer = self._clean_pass(nodes, read, placeholders[0])
        else:  # the layer's output is known: compute only what the suffix reads besides it (skip connections)
            needed = set(read)
            for node in reversed(nodes):
                if node in needed:
                    needed.update(node.all_input_nodes)
            self.cached, _, _ = self._clean_pass([n for n in nodes if n in needed], read, placeholders[0])
            self.clean_layer = clean_layer
        self.last_use = last_uses(self.suffix)
        if clean_layer is not None:  # the suffix on the model's own layer output: the output proves the graph
            clean_output = self._run_checked(clean_layer)
        if agrees is None:
            direct = model_output(net(inputs))
            agrees = lambda output: direct.shape == output.shape and torch.allclose(  # noqa: E731
                direct, output, rtol=1e-4, atol=1e-5)
        if not agrees(clean_output):
            raise NotTraceable("the traced graph does not reproduce the model's output on the clean input")
        self.clean_output = clean_output
        self.suffix_nodes = len(self.suffix) - 1  # without the output node
        self.prefix_nodes = len(nodes) - len(self.suffix) - 2  # without the input and the layer
        if clean_layer is None:
            self._verify()

    def _clean_pass(self, nodes: list[fx.Node], read: set[fx.Node], placeholder: fx.Node):
        values: dict[fx.Node, object] = {}
        dependent = {placeholder}
        keep = read | {self.layer_node}
        output = None
        last: dict[fx.Node, fx.Node] = {}
        for node in nodes:
            for source in node.all_input_nodes:
                last[source] = node
        try:
            for node in nodes:
                if node.op == "placeholder":
                    values[node] = self.inputs.contiguous(memory_format=self.format)
                    continue
                if node.op == "output":
                    output = model_output(fx.node.map_arg(node.args[0], lambda n: values[n]))
                    break
                if any(a in dependent for a in node.all_input_nodes):
                    dependent.add(node)
                args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: values[n])
                if mutates(node, self.modules):  # keep every stored clean value intact
                    args, kwargs = fx.node.map_aggregate(
                        (args, kwargs), lambda v: v.clone() if isinstance(v, torch.Tensor) else v)
                values[node] = run_node(self.net, self.modules, node, args, kwargs)
                for source in node.all_input_nodes:  # free what nothing later reads (bounded memory)
                    if last[source] is node and source not in keep:
                        values.pop(source, None)
        except NotTraceable:
            raise
        except Exception as error:  # noqa: BLE001 - the whole model takes over (and reports any real error)
            raise NotTraceable(f"the traced graph fails to run ({_first_line(error)})") from None
        layer = values.get(self.layer_node)
        if output is not None and not isinstance(layer, torch.Tensor):
            raise NotTraceable("the layer's output in the traced graph is not one tensor")
        count = len(self.inputs)
        cached = {}
        for node in read:
            value = values[node]
            per_image = node in dependent
            if per_image and not (isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == count):
                # e.g. ``x.size(0)`` of the input: it would hold the clean batch size, not the copies'
                raise NotTraceable(f"the graph after the layer reads {node.name!r}, computed before it, which is "
                                   "not a per-image tensor")
            cached[node] = (per_image, value)
        return cached, output, layer


    def _run_checked(self, layer_values: torch.Tensor) -> torch.Tensor:
        try:
            return self.run(layer_values, torch.arange(len(self.inputs), device=self.inputs.device))
        except Exception as error:  # noqa: BLE001
            raise NotTraceable(f"the graph after the layer fails to run on its own ({_first_line(error)})") from None

    def _verify(self) -> None:
        """The suffix on the clean layer output must give the clean model output (the graph proves the rest)."""
        output = self._run_checked(self.clean_layer)
        if output.shape != self.clean_output.shape or not torch.allclose(output, self.clean_output, rtol=1e-4,
                                                                         atol=1e-5):
            raise NotTraceable("the graph after the layer, fed the clean layer output, does not reproduce the "
                               "model's output")

    def run(self, layer_values: torch.Tensor, owners: torch.Tensor) -> torch.Tensor:
        """The model's output when the layer's output is ``layer_values`` (``B x ...``), copy ``b`` being a copy
        of image ``owners[b]`` (its other tensors are that image's clean ones)."""
        values: dict[fx.Node, object] = {self.layer_node: layer_values.contiguous(memory_format=self.format)}
        given = {self.layer_node}  # values this call did not make: never written in place
        for node, (per_image, value) in self.cached.items():
            values[node] = value.index_select(0, owners) if per_image else value
            if isinstance(value, torch.Tensor):
                given.add(node)
        output = None
        for node in self.suffix:
            if node.op == "output":
                output = model_output(fx.node.map_arg(node.args[0], lambda n: values[n]))
                break
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: values[n])
            if mutates(node, self.modules) and node.args and node.args[0] in given:
                args = (args[0].clone(), *args[1:])
            values[node] = run_node(self.net, self.modules, node, args, kwargs)
            for done in self.last_use.get(node, ()):
                if done not in self.cached:
                    values.pop(done, None)
        return output


class WholeModel:
    """The fallback: every copy runs the whole model, the layer's output (its last call per pass) replaced."""

    name = "whole-model"
    suffix_nodes = 0

    def __init__(self, net: nn.Module, inputs: torch.Tensor, layer: str, reason: str) -> None:
        self.net, self.inputs, self.layer, self.reason = net, inputs, layer, reason
        self.format = preferred_memory_format(inputs.device)
        counter = {"calls": 0}

        def count(module, args, output):
            counter["calls"] += 1

        with forward_hooks(net, {layer: count}), capture(net, layer, eval_mode=False) as captured:
            self.clean_output = model_output(net(inputs.contiguous(memory_format=self.format)))
        self.calls = counter["calls"]
        self.clean_layer = captured[layer]

    def run(self, layer_values: torch.Tensor, owners: torch.Tensor) -> torch.Tensor:
        state = {"calls": 0}

        def replace(module, args, output):
            state["calls"] += 1  # replace only the explained (last) call of a module that runs several times
            if state["calls"] % self.calls:
                return None
            # a copy (in-place ops downstream), in the layout the suffix engine uses too
            return replace_in_output(output, layer_values.contiguous(memory_format=self.format).clone())

        copies = self.inputs.index_select(0, owners).contiguous(memory_format=self.format)
        with forward_hooks(self.net, {self.layer: replace}):
            return model_output(self.net(copies))


Suffix = SuffixEngine | WholeModel


def build_suffix(net: nn.Module, inputs: torch.Tensor, layer: str, suffix: bool = True,
                 agrees: Callable[[torch.Tensor], bool] | None = None,
                 clean_layer: torch.Tensor | None = None) -> Suffix:
    """The graph after ``layer`` where the traced model proves it, else the whole model with the reason.

    ``agrees(output)``: whether the traced graph's output on ``inputs`` is the model's (a caller that has the
    model's clean output, or what it reads of it, spares a forward pass); default: compared with ``net(inputs)``.
    ``clean_layer``: the layer's output on ``inputs`` when the caller has it (captured from the model): then only
    the tensors the suffix reads besides it are computed, and the suffix fed with it must satisfy ``agrees``.
    """
    if not suffix:
        return WholeModel(net, inputs, layer, reason="suffix=False")
    try:
        return SuffixEngine(net, trace(net, layer), inputs, layer, agrees, clean_layer)
    except NotTraceable as why:
        return WholeModel(net, inputs, layer, reason=str(why))
