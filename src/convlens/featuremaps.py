"""Feature maps: each channel's activation map at chosen layers for one image, and an overview figure.

Activations are captured with ``convlens.hooks.capture`` during one forward pass (which also gives the
predictions), so in-place ReLUs after a hooked layer cannot change what is shown. The default layers are the
ends of the model's stages: the last block or layer at each spatial resolution, e.g. VGG16's block1_conv2 ...
block5_conv3 (after their ReLU), ResNet's ``layer1`` ... ``layer4``, EfficientNet's ``blocks.N``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from convlens.errors import ConvlensError
from convlens.filters import describe_model, scaled
from convlens.hooks import capture, preserved_state, resolve_layer
from convlens.models.classifier import ImageClassifier, as_module

if TYPE_CHECKING:
    pass

Order = Literal["index", "activation"]
ORDERS = ("index", "activation")
STAGE_SHRINK = 0.75  # a new stage starts when the side drops below this fraction (valid convs shrink by 2 px)


def default_layers(model: ImageClassifier | nn.Module, input_size: tuple[int, int] | None = None) -> list[str]:
    """The end of each stage, from early to late: the last unit at each spatial resolution.

    Units are the model's blocks: children of the model, with plain ``nn.Sequential``/``nn.ModuleList``
    containers opened up (a residual block, an Inception module or a timm ``BatchNormAct2d`` stays whole).
    One forward pass on a zero image groups consecutive units by output side; a group that contains a
    convolution contributes its last unit (pooling-only groups are skipped). The name is that of the
    outermost ``Sequential`` that ends with the unit (``layer1`` rather than ``layer1.1``).
    """
    module = as_module(model)
    if input_size is None:
        input_size = model.input_size if isinstance(model, ImageClassifier) else (224, 224)
    layers = _stage_ends(module, _units(module), input_size)
    if len(layers) < 2:  # one opaque backbone module: fall back to the convolutions themselves
        convs = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]
        layers = _stage_ends(module, convs, input_size) or layers
    if not layers:
        raise ConvlensError(f"no layer of {type(module).__name__} outputs feature maps; pass --layer")
    return [_outermost_alias(module, name) for name in layers]


def _units(root: nn.Module) -> list[tuple[str, nn.Module]]:
    def opened(prefix: str, parent: nn.Module) -> Iterable[tuple[str, nn.Module]]:
        for name, child in parent.named_children():
            path = f"{prefix}.{name}" if prefix else name
            yield from opened(path, child) if _is_plain_container(child) else [(path, child)]

    return list(opened("", root))


def _is_plain_container(module: nn.Module) -> bool:
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        return True
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _stage_ends(root: nn.Module, units: list[tuple[str, nn.Module]], input_size: tuple[int, int]) -> list[str]:
    calls: list[tuple[str, int | None, bool]] = []  # (name, output side or None, contains a conv), in run order

    def recorder(name: str, unit: nn.Module):
        has_conv = any(isinstance(m, nn.Conv2d) for m in unit.modules())

        def hook(module, inputs, output):
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            spatial = isinstance(tensor, torch.Tensor) and tensor.dim() == 4
            calls.append((name, min(tensor.shape[2:]) if spatial else None, has_conv))

        return hook

    with preserved_state(root) as net:
        handles = [unit.register_forward_hook(recorder(name, unit)) for name, unit in units]
        try:
            device = next(iter(net.parameters()), torch.empty(0)).device
            with torch.inference_mode():
                net(torch.zeros(1, 3, *input_size, device=device))
        finally:
            for handle in handles:
                handle.remove()
    ends, stage, reference = [], [], None
    for name, side, has_conv in [*calls, ("", None, False)]:  # the sentinel closes the last stage
        if side is None or reference is None or not STAGE_SHRINK * reference <= side <= reference / STAGE_SHRINK:
            if any(conv for _, conv in stage):
                ends.append(stage[-1][0])
            stage, reference = [], side
        if side is not None:
            stage.append((name, has_conv))
    return list(dict.fromkeys(ends))


def _outermost_alias(root: nn.Module, name: str) -> str:
    """``layer1.1`` -> ``layer1`` when it is the last child of a plain Sequential (same output tensor)."""
    while "." in name:
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name)
        if not (isinstance(parent, nn.Sequential) and type(parent).forward is nn.Sequential.forward):
            break
        if list(parent._modules)[-1] != child:
            break
        name = parent_name
    return name


def as_batch(model: ImageClassifier | nn.Module, image: str | Path | Image.Image | torch.Tensor) -> torch.Tensor:
    """A path or PIL image (preprocessed the model's way), or a ``3 x H x W``/``N x 3 x H x W`` input tensor."""
    if isinstance(image, torch.Tensor):
        batch = image.unsqueeze(0) if image.dim() == 3 else image
        if batch.dim() != 4:
            raise ConvlensError(f"expected an input of 3 x H x W or N x 3 x H x W, got {tuple(image.shape)}")
        return batch.to(next(iter(as_module(model).parameters()), torch.empty(0)).device)
    if not isinstance(model, ImageClassifier):
        raise ConvlensError("a bare nn.Module takes a preprocessed tensor; load the model with "
                            "convlens.load_model to pass image files")
    return model.prepare(image)


def forward_with_maps(model: ImageClassifier | nn.Module, inputs: torch.Tensor,
                      layers: Sequence[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One forward pass: the activations of ``layers`` (``N x C x H x W``) and the model's output."""
    with capture(model, list(layers)) as seen, torch.inference_mode():
        output = as_module(model)(inputs)
    maps = {name: seen[name] for name in layers}
    for name, tensor in maps.items():
        if tensor.dim() != 4:
            raise ConvlensError(f"layer {name!r} outputs {tuple(tensor.shape[1:])}, not feature maps "
                                "(C x H x W); choose a convolutional layer")
    return maps, output


def feature_maps(model: ImageClassifier | nn.Module, image: str | Path | Image.Image | torch.Tensor,
                 layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """``{layer: N x C x H x W activation}`` for an image (path, PIL) or input tensor; default layers when None."""
    inputs = as_batch(model, image)
    names = list(layers) if layers else default_layers(model, tuple(inputs.shape[2:]))
    return forward_with_maps(model, inputs, names)[0]


def channel_order(activation: torch.Tensor, order: Order = "index", count: int | None = None) -> torch.Tensor:
    """Channel indices of a ``C x H x W`` map: ``index`` order, or by mean activation, strongest first."""
    if order not in ORDERS:
        raise ConvlensError(f"--order {order!r}: choose one of {', '.join(ORDERS)}")
    if order == "index":
        channels = torch.arange(activation.shape[0])
    else:
        channels = torch.argsort(-activation.float().mean(dim=(1, 2)).cpu(), stable=True)
    return channels[:count]


def map_tiles(activation: torch.Tensor, channels: torch.Tensor) -> np.ndarray:
    """The chosen channels of a ``C x H x W`` map, each min-max scaled to [0, 1] on its own."""
    values = activation.detach().cpu().double().numpy()[channels.numpy()]
    return scaled(values, values, shared=False)


def layer_figure(layer: str, activation: torch.Tensor, channels: torch.Tensor, order: Order = "index") -> Figure:
    """A grid of the chosen channels' maps, each titled with its channel index."""
    from convlens.render import mosaic_figure

    count, height, width = activation.shape
    how = "by channel index" if order == "index" else "strongest mean activation first"
    title = f"{layer}: {len(channels)} of {count} channels ({height}x{width}), {how}; each map on its own scale"
    return mosaic_figure(map_tiles(activation, channels), titles=[f"#{c}" for c in channels.tolist()],
                         cmap="viridis", suptitle=title, tile_inches=1.1, max_inches=30.0)


def overview_figure(display: np.ndarray, predictions: Sequence, maps: dict[str, torch.Tensor],
                    channels: dict[str, torch.Tensor], per_row: int = 8) -> Figure:
    """The image with its top predictions above it, then one row of feature maps per layer (``channels``)."""
    import matplotlib.pyplot as plt

    per_row = max(1, min(per_row, max(len(c) for c in channels.values())))
    figure = plt.figure(figsize=(1.35 * per_row + 1.2, 3.6 + 1.45 * len(maps)))
    grid = figure.add_gridspec(len(maps) + 1, per_row, height_ratios=[2.4] + [1.0] * len(maps), hspace=0.3,
                               wspace=0.06)
    top = figure.add_subplot(grid[0, :])
    top.imshow(np.clip(display, 0, 1))
    top.set_title("\n".join(f"{rank}. {p.name}  {100 * p.probability:.2f}%" for rank, p in
                            enumerate(predictions, 1)), fontsize=10)
    top.axis("off")
    top.text(0.5, -0.03, f"each row: the {per_row} strongest channels (highest mean activation), each map on "
             "its own scale", transform=top.transAxes, ha="center", va="top", fontsize=8)
    for row, (layer, activation) in enumerate(maps.items(), start=1):
        shown = channels[layer][:per_row]
        for col, tile in enumerate(map_tiles(activation, shown)):
            axis = figure.add_subplot(grid[row, col])
            axis.imshow(tile, cmap="viridis", vmin=0, vmax=1)
            axis.set_title(f"#{int(shown[col])}", fontsize=7, pad=2)
            axis.axis("off")
            if col == 0:
                axis.text(-0.08, 0.5, f"{layer}\n{'x'.join(map(str, activation.shape))}", fontsize=8,
                          transform=axis.transAxes, ha="right", va="center")
    return figure


def run_featuremaps(model: ImageClassifier, image: str | Path | Image.Image, layers: Sequence[str] | None = None,
                    out: str | Path = "featuremaps", max_channels: int | None = None, order: Order = "index",
                    per_row: int = 8, top: int = 3, progress: bool = False) -> Path:
    """Write a grid per layer (all channels, or the first ``max_channels`` in ``order``) and an overview
    with the top predictions and each layer's ``per_row`` strongest channels.

    ``arrays.npz`` holds ``input``, ``activation/LAYER`` (all channels, as the model computed them),
    ``channels/LAYER`` (the indices drawn, in order) and ``probabilities``.
    """
    from convlens.output import output_dir
    from convlens.predict import top_k

    if not isinstance(model, ImageClassifier):
        raise ConvlensError("run_featuremaps needs a model from convlens.load_model (preprocessing, class names)")
    if (max_channels is not None and max_channels < 1) or per_row < 1:
        raise ConvlensError("--max and --per-row must be at least 1")
    channel_order(torch.zeros(1, 1, 1), order)  # a bad --order fails before any work
    inputs = as_batch(model, image)[:1]
    names = list(layers) if layers else default_layers(model, tuple(inputs.shape[2:]))
    for name in names:  # unknown names fail before anything is written
        resolve_layer(model, name)
    with output_dir(out, "featuremaps") as folder:
        with folder.timed():
            batched, logits = forward_with_maps(model, inputs, names)
            maps = {name: tensor[0].cpu() for name, tensor in batched.items()}
            probabilities = torch.softmax(logits.float(), dim=1).cpu()
            channels = {name: channel_order(tensor, order, max_channels) for name, tensor in maps.items()}
            strongest = {name: channel_order(tensor, "activation", per_row) for name, tensor in maps.items()}
        predictions = top_k(model, probabilities, top)[0]
        display = model.preprocessing.to_display(inputs[0])
        folder.save_figure(overview_figure(display, predictions, maps, strongest, per_row), "overview")
        for name in _track(names, progress):
            folder.save_figure(layer_figure(name, maps[name], channels[name], order), f"featuremaps-{name}")
        folder.add_arrays(input=inputs, probabilities=probabilities,
                          **{f"activation/{name}": tensor for name, tensor in batched.items()},
                          **{f"channels/{name}": index for name, index in channels.items()})
        folder.update(inputs=[str(image) if not isinstance(image, Image.Image) else "PIL image"],
                      model=describe_model(model), layers=names,
                      parameters={"max_channels": max_channels, "order": order, "per_row": per_row, "top": top},
                      predictions=[p.to_dict() for p in predictions],
                      shapes={name: list(tensor.shape) for name, tensor in maps.items()},
                      channels={name: index.tolist() for name, index in channels.items()},
                      overview_channels={name: index.tolist() for name, index in strongest.items()})
    return Path(out)


def _track(items: list[str], progress: bool):
    if not progress:
        return items
    from convlens.cli.common import track

    return track(items, len(items), "drawing feature maps")
