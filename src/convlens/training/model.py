"""The module a run trains: the baseline CNN from scratch, or a pretrained model with a new head."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from convlens.errors import ConvlensError
from convlens.models import zoo
from convlens.models.baseline import BaselineCNN
from convlens.models.loading import baseline_preprocessing, load_model
from convlens.models.preprocessing import Preprocessing
from convlens.training.config import TrainConfig

BASELINE_IMG_SIZE = 32


@dataclass
class TrainableModel:
    """What a checkpoint needs to rebuild the module: ``architecture``, ``img_size``, ``build_kwargs``."""

    module: nn.Module
    preprocessing: Preprocessing
    architecture: str
    head: str  # module path of the classifier (trained even when the backbone is frozen)
    img_size: int
    build_kwargs: dict = dataclasses.field(default_factory=dict)

    def metadata(self, class_names: list[str]) -> dict:
        return {"architecture": self.architecture, "num_classes": len(class_names), "class_names": class_names,
                "img_size": self.img_size, "input_size": list(self.preprocessing.input_size),
                "preprocessing": self.preprocessing.to_dict(), "build_kwargs": self.build_kwargs}


def build_model(config: TrainConfig, num_classes: int) -> TrainableModel:
    """A fresh module for ``config.arch`` with a ``num_classes`` head (seed the RNG first: heads are random)."""
    if config.arch == "baseline":
        if config.weights is not None:
            raise ConvlensError("--weights is for pretrained models; the baseline CNN trains from scratch "
                                "(use --resume to continue a run)")
        size = config.img_size or BASELINE_IMG_SIZE
        module = keras_initialised(BaselineCNN(num_classes, size))
        return TrainableModel(module, baseline_preprocessing(size), "baseline", "fc2", size)
    pretrained = load_model(config.arch, weights=config.weights, device="cpu")
    module = zoo.replace_head(pretrained.module, num_classes)
    head, _ = zoo.last_linear(module)
    preprocessing = resized(pretrained.preprocessing, config.img_size)
    return TrainableModel(module, preprocessing, pretrained.architecture, head, preprocessing.input_size[0],
                          dict(pretrained.metadata.get("build_kwargs") or {}))


def keras_initialised(module: nn.Module) -> nn.Module:
    """Keras's default initialisation (Glorot-uniform kernels, zero biases), as the leaf study's model had."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return module


def resized(preprocessing: Preprocessing, img_size: int | None) -> Preprocessing:
    """The model's preprocessing at another input size, keeping its resize-to-crop ratio."""
    if img_size is None or preprocessing.input_size == (img_size, img_size):
        return preprocessing
    resize = None if preprocessing.resize is None else round(img_size * preprocessing.resize / preprocessing.crop[0])
    return dataclasses.replace(preprocessing, crop=(img_size, img_size), resize=resize)


def head_parameters(module: nn.Module, head: str) -> list[nn.Parameter]:
    return list(module.get_submodule(head).parameters())


def set_backbone_trainable(module: nn.Module, head: str, trainable: bool) -> list[nn.Module]:
    """Freeze or unfreeze everything but the head; returns the frozen normalisation layers, which must stay
    in eval mode during training (a frozen backbone keeps its ImageNet batch statistics)."""
    head_ids = {id(p) for p in head_parameters(module, head)}
    for parameter in module.parameters():
        parameter.requires_grad_(trainable or id(parameter) in head_ids)
    if trainable:
        return []
    head_module = module.get_submodule(head)
    head_members = {id(m) for m in head_module.modules()}
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and id(m) not in head_members]
