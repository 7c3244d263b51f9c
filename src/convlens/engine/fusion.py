"""Convolutions fused with the ReLU after them (and, in a residual block, with the addition before that ReLU),
for the regional engine on the CPU: one oneDNN call (``torch.ops.mkldnn._convolution_pointwise``) instead of a
convolution and one or two more passes over its output. The sum and the ReLU act on the convolution's float32
result, so the values are the same as the separate ops (bit for bit in our checks).

``fuse_activations(model, keep)`` rewrites a traced copy of a model (the one ``inference.fold_batch_norms``
makes): ``relu(conv(x))`` becomes ``FusedConv(x)``, ``relu(conv(x) + other)`` becomes ``FusedConv(x, other)``.
Left alone: the layer ``keep`` (its output is read), a convolution called more than once or read elsewhere, and
what oneDNN cannot take (padding modes other than zeros, string paddings). A ``FusedConv`` falls back to the
separate ops off the CPU or off float32.
"""

from __future__ import annotations

import operator
from collections import Counter

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.experimental.optimization import replace_node_module

_RELU_FUNCTIONS = {torch.relu, torch.relu_, F.relu}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class FusedConv(nn.Module):
    """``relu(conv(x))``, or ``relu(conv(x) + other)`` when built with ``add=True``."""

    def __init__(self, conv: nn.Conv2d, add: bool) -> None:
        super().__init__()
        self.conv, self.add = conv, add

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        return self.run(x, other, self.conv.padding)

    def run(self, x: torch.Tensor, other: torch.Tensor | None, padding) -> torch.Tensor:
        """The fused computation with the given padding (the regional engine passes 0: its regions are padded)."""
        conv = self.conv
        if x.device.type != "cpu" or x.dtype != torch.float32 or conv.weight.dtype != torch.float32:
            out = F.conv2d(x, conv.weight, conv.bias, conv.stride, padding, conv.dilation, conv.groups)
            return torch.relu(out if other is None else out + other)
        geometry = (list(padding), list(conv.stride), list(conv.dilation), conv.groups)
        if other is None:
            return torch.ops.mkldnn._convolution_pointwise(x, conv.weight, conv.bias, *geometry, "relu", [], "")
        return torch.ops.mkldnn._convolution_pointwise.binary(x, other, conv.weight, conv.bias, *geometry, "add",
                                                              1.0, "relu", [], "")


def _is_relu(node: fx.Node, modules: dict[str, nn.Module], keep: str | None) -> bool:
    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU and node.target != keep and len(node.args) == 1
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS and len(node.args) == 1 and set(node.kwargs) <= {"inplace"}
    return node.op == "call_method" and node.target in ("relu", "relu_") and len(node.args) == 1


def _is_add(node: fx.Node, conv: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ADD_FUNCTIONS and len(node.args) == 2
            and not node.kwargs and conv in node.args and all(isinstance(a, fx.Node) for a in node.args)
            and node.args[0] is not node.args[1])


def _fusable(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and not conv._forward_hooks and not conv._forward_pre_hooks)


def fuse_activations(model: fx.GraphModule, keep: str | None = None) -> int:
    """Fuse, in place, every convolution of ``model`` (a traced copy whose module tree is its own) with the ReLU
    that follows it, through a residual addition where there is one; the number fused."""
    if not available():
        return 0
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in model.graph.nodes if n.op == "call_module")
    graph, fused = model.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_module" or node.target == keep or calls[node.target] > 1 or len(node.users) != 1:
            continue
        if not _fusable(modules[node.target]) or len(node.args) != 1 or node.kwargs:
            continue
        user = next(iter(node.users))
        if _is_relu(user, modules, keep):
            replace_node_module(node, modules, FusedConv(modules[node.target], add=False))
            user.replace_all_uses_with(node)
            graph.erase_node(user)
        elif _is_add(user, node) and len(user.users) == 1 and _is_relu(relu := next(iter(user.users)), modules, keep):
            other = user.args[1] if user.args[0] is node else user.args[0]
            replace_node_module(node, modules, FusedConv(modules[node.target], add=True))
            with graph.inserting_before(relu):  # after both operands: the other one may come after the conv
                joined = graph.call_module(node.target, (node.args[0], other))
            relu.replace_all_uses_with(joined)
            for done in (relu, user, node):
                graph.erase_node(done)
        else:
            continue
        fused += 1
    if fused:
        model.recompile()
    return fused
