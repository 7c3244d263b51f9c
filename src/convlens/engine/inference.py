"""An inference copy of a model for methods that run it on many variants of an input (Score-CAM's masked inputs):
the traced graph with every batch norm that directly follows a convolution folded into that convolution's
weights (``torch.fx.experimental.optimization.fuse``), which saves one pass over each feature map (on the CPU,
in channels-last, a third of a ResNet's time).

The copy is checked on the clean inputs against the model; where the model does not trace, nothing folds, or the
copy disagrees, the model itself is used and ``reason`` says why. The model is never changed.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.experimental.optimization import fuse, matches_module_pattern, replace_node_module
from torch.nn.utils.fusion import fuse_conv_bn_eval

from convlens.engine.batched import ACTIVATION_COPIES, forward_measured, model_output
from convlens.engine.fusion import fuse_activations
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


def fold_batch_norms(model: fx.GraphModule, keep: str | None = None) -> int:
    """Fold, in place, every batch norm of ``model`` (a traced copy whose module tree is its own down to the
    leaves) that directly follows a convolution into it (the pairs of ``torch.fx.experimental.optimization.fuse``);
    the number folded. Left alone: the pair whose convolution or batch norm is ``keep`` (its output would change
    meaning), a convolution whose output is read elsewhere too, and modules called more than once. A folded
    convolution is a new module (``fuse_conv_bn_eval`` copies it): the model's own are not changed."""
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in model.graph.nodes if n.op == "call_module")
    folded = 0
    for node in list(model.graph.nodes):
        if not matches_module_pattern((nn.Conv2d, nn.BatchNorm2d), node, modules):
            continue
        conv, norm = node.args[0], modules[node.target]
        if (len(conv.users) > 1 or keep in (conv.target, node.target) or calls[conv.target] > 1
                or calls[node.target] > 1 or not norm.track_running_stats or norm.running_mean is None):
            continue
        replace_node_module(conv, modules, fuse_conv_bn_eval(modules[conv.target], norm))
        node.replace_all_uses_with(conv)
        model.graph.erase_node(node)
        folded += 1
    if folded:
        model.recompile()
    return folded


def inference_graph(net: nn.Module, graph: fx.Graph, keep: str | None = None,
                    fuse: bool = False) -> fx.GraphModule | None:
    """A copy of the traced model for the regional engine, with fewer passes over the feature maps: batch norms
    folded into the convolutions before them and, with ``fuse`` (CPU), convolutions fused with the ReLU (and
    residual addition) after them (``engine/fusion.py``); ``keep`` (the layer read) stays as it is. None when
    nothing changes. Unchecked: the caller compares the copy's output with the model's (``RegionalEngine`` does).

    The copy's module tree is new down to the leaves (``fx.GraphModule`` copies the path to each), its graph a
    copy of ``graph``: rewriting it changes neither the model nor ``graph``."""
    try:
        model = fx.GraphModule(net, copy.deepcopy(graph))
        changed = fold_batch_norms(model, keep)
        changed += fuse_activations(model, keep) if fuse else 0
    except Exception:  # noqa: BLE001 - an optimisation: the model's own graph still works
        return None
    return model if changed else None
