"""Uploaded and given images: checked by content (not by name), size-limited, kept by content hash."""

from __future__ import annotations

import hashlib
import io
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

from convlens.data.images import MAX_PIXELS

MAX_UPLOAD_BYTES = 20 * 2**20
# Pillow formats the loader reads; anything else is refused (415) whatever its file name says.
FORMATS = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "BMP": "bmp", "TIFF": "tif", "WEBP": "webp", "PPM": "ppm"}
MAX_STORED = 512  # uploads kept on disk; the oldest go first


class UploadError(Exception):
    """An upload refused with an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class StoredImage:
    id: str  # sha256 of the file's bytes
    name: str
    path: Path
    width: int
    height: int
    format: str

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "width": self.width, "height": self.height, "format": self.format}


def check_image(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[str, int, int]:
    """``(format, width, height)`` of an image file's bytes; UploadError 415 if they are not an image we read,
    413 over ``max_pixels``. The header is read, not the pixels (no decompression bomb gets decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                kind, (width, height) = image.format, image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise UploadError(415, "not an image file (PNG, JPEG, GIF, BMP, TIFF, WebP or PPM expected)") from None
    if kind not in FORMATS:
        raise UploadError(415, f"{kind} images are not supported; use PNG, JPEG, GIF, BMP, TIFF, WebP or PPM")
    if width * height > max_pixels:
        raise UploadError(413, f"image is {width}x{height} = {width * height / 1e6:.0f} megapixels, over the "
                               f"limit of {max_pixels / 1e6:.0f}; downscale it first")
    return kind, width, height


class ImageStore:
    """The images the app knows: given on the command line, or uploaded (written under a private folder)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="convlens-serve-"))
        self.images: dict[str, StoredImage] = {}
        self._lock = threading.Lock()

    def add_bytes(self, data: bytes, name: str) -> StoredImage:
        kind, width, height = check_image(data)
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            if digest in self.images:
                return self.images[digest]
            path = self.folder / f"{digest}.{FORMATS[kind]}"
            path.write_bytes(data)
            stored = StoredImage(digest, Path(name or "upload").name[:120], path, width, height, kind)
            self.images[digest] = stored
            uploads = [i for i in self.images.values() if i.path.parent == self.folder]
            for old in uploads[:max(0, len(uploads) - MAX_STORED)]:
                old.path.unlink(missing_ok=True)
                self.images.pop(old.id, None)
            return stored

    def add_file(self, path: Path) -> StoredImage:
        data = path.read_bytes()
        kind, width, height = check_image(data)
        digest = hashlib.sha256(data).hexdigest()
        stored = StoredImage(digest, path.name, path, width, height, kind)
        with self._lock:
            return self.images.setdefault(digest, stored)

    def get(self, image_id: str) -> StoredImage:
        try:
            return self.images[image_id]
        except KeyError:
            raise UploadError(404, f"unknown image {image_id!r}; upload it first (POST /api/images)") from None

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
