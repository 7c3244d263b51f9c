"""The plain way: every variant as a full input, a batch per forward pass, the layer read by a hook.

Used when the regional engine cannot be (the model does not trace, the traced graph does not reproduce the
model, nothing local follows the input) or is not asked for; ``reason`` says which.
"""

from __future__ import annotations

import torch
from torch import nn

from convlens.engine.regions import Regions
from convlens.errors import ConvlensError
from convlens.hooks import capture, forward_hooks
from convlens.models.loading import preferred_memory_format

# A batch holds about this many times the largest activation of one sample at once (inputs, outputs, workspace).
ACTIVATION_COPIES = 4


def model_output(output) -> torch.Tensor:
    """The model's output, which the engines need as one tensor."""
    if not isinstance(output, torch.Tensor):
        raise ConvlensError("this method needs a model whose output is one tensor (N x classes logits)")
    return output


def forward_measured(net: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The model's output, and the largest output of any leaf module for one sample in bytes (to size batches)."""
    largest = [inputs.numel() * inputs.element_size() // max(1, inputs.shape[0])]

    def record(module, args, output):
        if isinstance(output, torch.Tensor) and output.ndim:
            largest[0] = max(largest[0], output.numel() * output.element_size() // max(1, output.shape[0]))

    leaves = {name: record for name, module in net.named_modules() if name and not list(module.children())}
    with forward_hooks(net, leaves):
        output = model_output(net(inputs))
    return output, largest[0]


class BatchedEngine:
    """Variants run as full inputs. Call inside ``torch.inference_mode()`` and ``hooks.preserved_state``."""

    name = "batched"
    incremental_nodes = 0
    kept_bytes = 0  # nothing held beyond the clean output and layer

    def __init__(self, net: nn.Module, inputs: torch.Tensor, regions: Regions, layer: str | None = None,
                 reason: str = "") -> None:
        self.net, self.inputs, self.regions, self.layer, self.reason = net, inputs, regions, layer, reason
        self.device = inputs.device
        self.format = preferred_memory_format(self.device)
        try:
            self.clean_output, self.clean_layer, measured = self._clean_pass(self.format)
        except RuntimeError:  # a model that needs contiguous tensors (x.view after a conv)
            self.format = torch.contiguous_format
            self.clean_output, self.clean_layer, measured = self._clean_pass(self.format)
        self.per_sample_bytes = ACTIVATION_COPIES * measured

    def _clean_pass(self, memory_format) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        inputs = self.inputs.contiguous(memory_format=memory_format)
        if self.layer is None:
            output, measured = forward_measured(self.net, inputs)
            return output, None, measured
        with capture(self.net, self.layer, eval_mode=False) as captured:
            output, measured = forward_measured(self.net, inputs)
        return output, captured[self.layer], measured

    def run(self, row_index: torch.Tensor, col_index: torch.Tensor,
            channel: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The model's output for variants ``(row_index[b], col_index[b])`` and the layer's output for them
        (only channel ``channel`` when given, kept as a dimension of 1; None without a layer)."""
        batch = self.regions.variants(self.inputs, row_index, col_index).contiguous(memory_format=self.format)
        if self.layer is None:
            return model_output(self.net(batch)), None
        with capture(self.net, self.layer, eval_mode=False) as captured:
            output = model_output(self.net(batch))
        layer = captured[self.layer]
        return output, layer if channel is None else layer[:, channel:channel + 1]
