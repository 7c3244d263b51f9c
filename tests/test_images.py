"""The one image loader: every oddity becomes RGB, every bad file one line naming its path."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from convlens.data import load_image
from convlens.data.images import expand_image_args, list_images
from convlens.errors import ConvlensError


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = 255  # left half white
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=100)
    loaded = load_image(path)
    assert loaded.size == (20, 40)  # width and height swapped
    array = np.asarray(loaded).astype(int)
    assert array[:20].mean() > 200 and array[20:].mean() < 50  # white half now on top


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "1"])
def test_modes_become_rgb(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    path = tmp_path / f"image_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
    rgb.convert(mode).save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (16, 16)
    if mode == "L":
        gray = np.asarray(rgb.convert("L"))
        assert np.array_equal(np.asarray(loaded)[..., 0], gray)


def test_rgba_is_composited_on_white(tmp_path):
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[..., 0] = 200  # red-ish
    pixels[:2, :, 3] = 0  # top half fully transparent
    pixels[2:, :, 3] = 255
    path = tmp_path / "alpha.png"
    Image.fromarray(pixels, "RGBA").save(path)
    array = np.asarray(load_image(path))
    assert (array[:2] == 255).all()  # transparent -> white
    assert (array[2:] == [200, 0, 0]).all()


def test_palette_with_transparency_is_composited(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    image.putpixel((0, 0), 1)
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    array = np.asarray(load_image(path))
    assert tuple(array[0, 0]) == (10, 20, 30)
    assert tuple(array[3, 3]) == (255, 255, 255)


def test_16_bit_grayscale_keeps_its_range(tmp_path):
    values = np.array([[0, 65535], [32768, 16384]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    array = np.asarray(load_image(path))
    assert array.shape == (2, 2, 3)
    assert list(array[..., 0].ravel()) == [0, 255, 128, 64]


def test_truncated_file_names_its_path(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ConvlensError) as info:
        load_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_non_image_file_names_its_path(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not an image at all")
    with pytest.raises(ConvlensError, match="not an image file") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConvlensError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_huge_image_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("1", (12_000, 9_000)).save(path)  # 108 megapixels, a tiny file
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1))
    with pytest.raises(ConvlensError, match="108 megapixels") as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert not decoded


def test_listing_ignores_non_images(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "x.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "y.JPG")
    (tmp_path / "readme.txt").write_text("hi")
    assert [p.name for p in list_images(tmp_path)] == ["x.png", "y.JPG"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConvlensError, match="no images found"):
        expand_image_args([empty])
