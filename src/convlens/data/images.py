"""The image loader shared by every command.

Every image becomes an 8-bit RGB ``PIL.Image``: EXIF orientation applied, grayscale / palette / CMYK / 16-bit
converted, transparency composited on white. Bad files fail with one line that names the path.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from convlens.errors import ConvlensError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MAX_PIXELS = 100_000_000
PATH_INFO = "convlens_path"


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open ``path`` as an RGB image, or raise ConvlensError naming the path."""
    path = Path(path)
    if path.is_dir():
        raise ConvlensError(f"{path} is a folder, not an image file")
    if not path.is_file():
        raise ConvlensError(f"image not found: {path}")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check would warn or raise with its own limit; we apply ours before decoding.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ConvlensError(
                        f"{path}: image is {width}x{height} = {width * height / 1e6:.0f} megapixels, "
                        f"over the limit of {max_pixels / 1e6:.0f}; downscale it first"
                    )
                image.load()
                rgb = to_rgb(ImageOps.exif_transpose(image))
                rgb.info[PATH_INFO] = str(path)  # lets later steps (e.g. the resize guard) name the file
                return rgb
    except ConvlensError:
        raise
    except Image.DecompressionBombError as exc:  # pragma: no cover - our limit is stricter than Pillow's
        raise ConvlensError(f"{path}: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = "not an image file" if "cannot identify" in str(exc) else f"unreadable image ({exc})"
        raise ConvlensError(f"{path}: {reason}") from None


def load_readable(paths: list[Path], strict: bool = False, skipped: list[tuple[Path, str]] | None = None,
                  required: Collection[Path] = ()) -> Iterator[tuple[Path, Image.Image]]:
    """``(path, image)`` for each path that loads; an unreadable file is appended to ``skipped`` with its
    reason and left out, or, with ``strict`` (or when it is one of ``required``, e.g. named on the command
    line rather than found in a folder), raised (ConvlensError) at once."""
    required = {Path(p) for p in required}
    for path in paths:
        try:
            image = load_image(path)
        except ConvlensError as exc:
            if strict or skipped is None or Path(path) in required:
                raise
            skipped.append((Path(path), str(exc)))
            continue
        yield Path(path), image


def image_name(image: Image.Image) -> str:
    """The file an image was loaded from (``load_image`` records it), or ``image``."""
    return image.info.get(PATH_INFO, "image")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparent pixels are composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _wide_gray_to_rgb(image)
    if image.mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
    if image.mode in ("LA", "La", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "RGBa"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _wide_gray_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit and float grayscale: scale by the type's range (not Pillow's clipping) to 8 bits."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    else:
        scaled = values / 65535.0
    gray = np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def list_images(root: str | Path, recursive: bool = True) -> list[Path]:
    """Image files under ``root`` (by extension, sorted); a single image path is returned as is."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ConvlensError(f"no such file or folder: {root}")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def expand_image_args(paths: list[str | Path]) -> list[Path]:
    """CLI image arguments: files as given, folders expanded to the images inside them."""
    images: list[Path] = []
    for item in paths:
        found = list_images(item)
        if not found:
            raise ConvlensError(f"no images found in {item}")
        images.extend(found)
    return images
