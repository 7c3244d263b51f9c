"""How a model wants its pixels: resize, centre crop, normalisation. Carried by every loaded model."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from convlens.errors import ConvlensError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_resized_size(image: Image.Image, shorter_side: int) -> None:
    """Resizing the shorter side of a very thin image (3 x 100000 px, a 2 KB PNG) blows the longer side up to
    millions of pixels: refuse, naming the file, before any memory is taken (the loader's limit, after resizing)."""
    from convlens.data.images import MAX_PIXELS, image_name

    width, height = image.size
    scale = shorter_side / max(1, min(width, height))
    new_width, new_height = round(width * scale), round(height * scale)
    if new_width * new_height > MAX_PIXELS:
        raise ConvlensError(
            f"{image_name(image)}: a {width}x{height} image is {new_width}x{new_height} = "
            f"{new_width * new_height / 1e6:.0f} megapixels once its shorter side is resized to {shorter_side}, "
            f"over the limit of {MAX_PIXELS / 1e6:.0f}; crop it to a less extreme aspect ratio first")


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to ``resize`` (or the whole image to ``crop`` when ``resize`` is None and
    ``squash`` is set), centre-crop to ``crop``, scale to [0, 1], then ``(x - mean) / std``."""

    crop: tuple[int, int] = (224, 224)
    resize: int | None = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    squash: bool = False  # resize straight to ``crop`` ignoring aspect ratio (Keras-style training inputs)
    channels: str = "RGB"  # "BGR": the model takes blue first (Keras's caffe mode); mean/std in that order

    @property
    def input_size(self) -> tuple[int, int]:
        return self.crop

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        fields = dict(data)
        for key in ("crop", "mean", "std"):
            if key in fields:
                fields[key] = tuple(fields[key])
        return cls(**fields)

    def geometry(self, image: Image.Image) -> Image.Image:
        """The resize and crop alone, as a PIL image (what the model sees, before normalisation)."""
        mode = InterpolationMode(self.interpolation)
        if self.squash or self.resize is None:
            return TF.resize(image, list(self.crop), interpolation=mode, antialias=True)
        check_resized_size(image, self.resize)
        image = TF.resize(image, self.resize, interpolation=mode, antialias=True)
        return TF.center_crop(image, list(self.crop))

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """One RGB image to a normalised ``3 x H x W`` float32 tensor."""
        return self.normalize(TF.pil_to_tensor(self.geometry(image)).float().div_(255.0))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.to_tensor(image)

    def batch(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([self.to_tensor(image) for image in images])

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB pixels (``... x 3 x H x W``) to model input."""
        mean, std = self._stats(pixels)
        if self.channels == "BGR":
            pixels = pixels.flip(-3)
        return (pixels - mean) / std

    def denormalize(self, inputs: torch.Tensor) -> torch.Tensor:
        """Model input back to [0, 1] RGB pixels, clipped, for display."""
        mean, std = self._stats(inputs)
        pixels = inputs * std + mean
        if self.channels == "BGR":
            pixels = pixels.flip(-3)
        return pixels.clamp(0.0, 1.0)

    def to_display(self, inputs: torch.Tensor) -> np.ndarray:
        """One ``3 x H x W`` model input as an ``H x W x 3`` float array in [0, 1]."""
        return self.denormalize(inputs.detach().cpu().float()).permute(1, 2, 0).numpy()

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (3, 1, 1)
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(shape)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device).view(shape)
        return mean, std


# keras.applications' ``preprocess_input`` modes as [0, 1]-pixel statistics, plus ``unit`` (x / 255, Keras's
# ``rescale=1/255``) and ``raw`` (0..255 as they are, for models that rescale inside, e.g. EfficientNet).
KERAS_MODES: dict[str, dict] = {
    "unit": {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)},
    "raw": {"mean": (0.0, 0.0, 0.0), "std": (1 / 255, 1 / 255, 1 / 255)},
    "tf": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
    "torch": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    "caffe": {"mean": (103.939 / 255, 116.779 / 255, 123.68 / 255), "std": (1 / 255, 1 / 255, 1 / 255),
              "channels": "BGR"},
}


def keras_preprocessing(mode: str, size: tuple[int, int], interpolation: str = "nearest") -> Preprocessing:
    """What Keras feeds a model: ``load_img(target_size=size)`` (the whole image resized, by default nearest
    neighbour, no crop), then ``preprocess_input`` in ``mode`` (``KERAS_MODES``)."""
    from convlens.errors import ConvlensError

    if mode not in KERAS_MODES:
        raise ConvlensError(f"unknown preprocessing {mode!r}; use one of {', '.join(KERAS_MODES)}")
    if interpolation not in {m.value for m in InterpolationMode}:
        raise ConvlensError(f"unknown interpolation {interpolation!r}; use nearest, bilinear or bicubic")
    return Preprocessing(crop=(int(size[0]), int(size[1])), resize=None, interpolation=interpolation,
                         squash=True, **KERAS_MODES[mode])
