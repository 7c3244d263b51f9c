"""An inference copy of a model for methods that run it on many variants of an input (Score-CAM's masked inputs):
the traced graph with every batch norm that directly follows a convolution folded into that convolution's
weights (``torch.fx.experimental.optimization.fuse``), which saves one pass over each feature map (on the CPU,
in channels-last, a third of a ResNet's time).

The copy is checked on the clean inputs against the model; where the model does not trace, nothing folds, or the
copy disagrees, the model itself is used and ``reason`` says why. The model is never changed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.experimental.optimization import fuse, matches_module_pattern, replace_node_module
from torch.nn.utils.fusion import fuse_conv_bn_eval

from convlens.engine.batched import ACTIVATION_COPIES, forward_measured, model_output
from convlens.engine.ops import NotTraceable, trace
from convlens.models.loading import preferred_memory_format


@dataclass
class InferenceModel:
    """``forward(batch)`` gives the model's output; ``folded``: batch norms folded (0 when ``forward`` is the
    model itself, then ``reason`` says why); ``per_sample_bytes``: memory one input costs (for batch sizing; 0
    when not measured)."""

    forward: nn.Module
    folded: int
    reason: str
    per_sample_bytes: int


def _count_batchnorms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def inference_model(net: nn.Module, sample: torch.Tensor,
                    agrees: Callable[[torch.Tensor], bool] | None = None) -> InferenceModel:
    """The folded copy of ``net`` where it reproduces ``net`` on ``sample`` (``agrees(output)`` when given, which
    spares a pass of the model; else the output of ``net(sample)``), otherwise ``net`` itself. Call inside
    ``torch.inference_mode()`` and ``hooks.preserved_state`` (eval mode)."""
    try:
        graph = trace(net)
        folded = fuse(fx.GraphModule(net, graph), no_trace=True)  # a deep copy: the model keeps its weights
    except NotTraceable as why:
        return InferenceModel(net, 0, str(why), 0)
    except Exception as error:  # noqa: BLE001 - folding is an optimisation: the model itself still works
        return InferenceModel(net, 0, f"batch norms cannot be folded ({type(error).__name__})", 0)
    count = _count_batchnorms(net) - _count_batchnorms(folded)
    if not count:
        return InferenceModel(net, 0, "no batch norm directly follows a convolution", 0)
    batch = sample.contiguous(memory_format=preferred_memory_format(sample.device))
    try:
        output, measured = forward_measured(folded, batch)
    except Exception as error:  # noqa: BLE001
        return InferenceModel(net, 0, f"the folded graph fails to run ({type(error).__name__})", 0)
    if agrees is None:
        clean = model_output(net(batch))
        scale = float(clean.abs().max())
        same = output.shape == clean.shape and torch.allclose(output, clean, rtol=1e-4, atol=1e-5 * max(1.0, scale))
    else:
        same = agrees(output)
    if not same:
        return InferenceModel(net, 0, "the folded graph does not reproduce the model's output", 0)
    return InferenceModel(folded, count, "", ACTIVATION_COPIES * measured)


def _fold(net: nn.Module, graph: fx.Graph, keep: str | None) -> fx.GraphModule:
    """``torch.fx.experimental.optimization.fuse`` (conv -> batch norm pairs on a deep copy), leaving alone the
    pair whose convolution or batch norm is ``keep`` (its output would change meaning)."""
    model = copy.deepcopy(fx.GraphModule(net, graph))
    modules = dict(model.named_modules())
    new_graph = copy.deepcopy(model.graph)
    for node in list(new_graph.nodes):
        if not matches_module_pattern((nn.Conv2d, nn.BatchNorm2d), node, modules):
            continue
        conv = node.args[0]
        if len(conv.users) > 1 or keep in (conv.target, node.target) or not modules[node.target].track_running_stats:
            continue
        replace_node_module(conv, modules, fuse_conv_bn_eval(modules[conv.target], modules[node.target]))
        node.replace_all_uses_with(conv)
        new_graph.erase_node(node)
    return fx.GraphModule(model, new_graph)


def folded_graph(net: nn.Module, graph: fx.Graph, inputs: torch.Tensor, layer: str | None) -> fx.GraphModule | None:
    """A copy of the traced model with its batch norms folded into the convolutions before them (except the
    layer's own pair), for the regional engine (fewer nodes to compute on regions), when it reproduces ``net``
    on ``inputs``; None when nothing folds or the copy disagrees."""
    try:
        folded = _fold(net, graph, layer)
    except Exception:  # noqa: BLE001 - folding is an optimisation
        return None
    if len([n for n in folded.graph.nodes if n.op == "call_module"]) == len(
            [n for n in graph.nodes if n.op == "call_module"]):
        return None
    batch = inputs.contiguous(memory_format=preferred_memory_format(inputs.device))
    try:
        output, clean = model_output(folded(batch)), model_output(net(batch))
    except Exception:  # noqa: BLE001
        return None
    scale = float(clean.abs().max())
    if output.shape != clean.shape or not torch.allclose(output, clean, rtol=1e-4, atol=1e-5 * max(1.0, scale)):
        return None
    return folded
