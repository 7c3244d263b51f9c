"""Models: loading by spec, the baseline CNN, checkpoints, preprocessing."""

from convlens.models.baseline import BaselineCNN
from convlens.models.checkpoint import save_checkpoint
from convlens.models.classifier import ImageClassifier, as_module
from convlens.models.loading import DEFAULT_SPEC, baseline_preprocessing, build_architecture, load_model
from convlens.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

__all__ = [
    "DEFAULT_SPEC",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BaselineCNN",
    "ImageClassifier",
    "Preprocessing",
    "as_module",
    "baseline_preprocessing",
    "build_architecture",
    "load_model",
    "save_checkpoint",
]
