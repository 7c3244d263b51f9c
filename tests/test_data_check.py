"""The data check: class counts, unreadable files, identical and near-duplicate images, leaks, label conflicts."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from convlens.data.check import check_data, difference_hash, hamming, perceptual_hash, unique_images
from convlens.data.folders import find_layout, stratified_group_folds, stratified_split
from convlens.errors import ConvlensError

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "colorwheel",
          "retina", "camera", "coins", "horse", "moon")


def photo(name: str, side: int = 160) -> Image.Image:
    pixels = getattr(skimage.data, name)()
    image = Image.fromarray(pixels[..., :3] if pixels.ndim == 3 else pixels).convert("RGB")
    return image.resize((side, side * image.height // image.width), Image.Resampling.LANCZOS)


def save(image: Image.Image, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


@pytest.fixture(scope="module")
def made_folder(tmp_path_factory) -> Path:
    """train/ and validation/ with every kind of duplicate made on purpose (see the asserts for which)."""
    root = tmp_path_factory.mktemp("made")
    train, validation = root / "train", root / "validation"
    for index, name in enumerate(PHOTOS[:9]):  # astronaut, rocket, colorwheel in a; coffee ... in b; chelsea ... in c
        save(photo(name), train / "abc"[index % 3] / f"{name}.png")
    save(photo(PHOTOS[9]), validation / "a" / "distinct.png")
    save(photo(PHOTOS[10]), validation / "b" / "distinct.png")
    save(photo(PHOTOS[11]), validation / "c" / "distinct.png")
    # identical: a byte copy, and the same pixels in another format
    shutil.copy(train / "a" / "astronaut.png", validation / "a" / "astronaut_copy.png")
    save(photo("coffee"), validation / "b" / "coffee_as_bmp.bmp")
    # near: JPEG re-encoded, and downscaled to 60 %
    save(photo("rocket"), validation / "a" / "rocket_q60.jpg", quality=60)
    save(photo("chelsea").resize((96, 60), Image.Resampling.BILINEAR), train / "c" / "chelsea_small.png")
    # the same image filed under two classes
    shutil.copy(train / "c" / "hubble_deep_field.png", train / "b" / "hubble_again.png")
    # not images: ignored; unreadable: skipped and listed
    (train / "a" / "notes.txt").write_text("not an image")
    (train / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def names(report, group) -> set[str]:
    return {str(report.images[i].path.relative_to(report.layout.root)) for i in group}


def test_made_duplicates_are_found_exactly(made_folder):
    report = check_data(made_folder)
    assert report.layout.given_split and report.class_names == ["a", "b", "c"]
    exact = sorted(sorted(names(report, g)) for g in report.exact_groups())
    assert exact == [
        ["train/a/astronaut.png", "validation/a/astronaut_copy.png"],
        ["train/b/coffee.png", "validation/b/coffee_as_bmp.bmp"],
        ["train/b/hubble_again.png", "train/c/hubble_deep_field.png"],
    ]
    near = sorted(sorted(names(report, g)) for g in report.near_groups())
    assert near == [["train/a/rocket.png", "validation/a/rocket_q60.jpg"],
                    ["train/c/chelsea.png", "train/c/chelsea_small.png"]]
    leaks = report.leaks()
    assert sorted(names(report, leaks["exact"])) == ["validation/a/astronaut_copy.png",
                                                    "validation/b/coffee_as_bmp.bmp"]
    assert names(report, leaks["near"]) == {"validation/a/rocket_q60.jpg"}
    conflicts = report.label_conflicts()
    assert [names(report, g) for g in conflicts] == [{"train/c/hubble_deep_field.png", "train/b/hubble_again.png"}]
    assert [p.name for p, _ in report.corrupt] == ["broken.jpg"]
    assert [p.name for p in report.ignored] == ["notes.txt"]
    # 9 + 1 + 1 (chelsea_small) photos in train, 3 + 3 in validation; 3 identical copies among them
    assert len(report.images) == 17 and report.unique_count() == 14


def test_exact_groups_match_an_independent_pixel_digest(made_folder):
    report = check_data(made_folder)
    digests = defaultdict(set)
    for info in report.images:
        pixels = np.asarray(Image.open(info.path).convert("RGB"))
        digests[hashlib.md5(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()].add(info.path.name)
    expected = sorted(sorted(group) for group in digests.values() if len(group) > 1)
    found = sorted(sorted(report.images[i].path.name for i in g) for g in report.exact_groups())
    assert found == expected


def test_hashes_survive_reencoding_and_resizing_but_separate_distinct_photos(tmp_path):
    original = photo("astronaut", 256)
    variants = [Image.open(save(original, tmp_path / "q50.jpg", quality=50)),
                original.resize((128, 128), Image.Resampling.BICUBIC), original.resize((300, 300))]
    for variant in variants:
        for hash_function in (perceptual_hash, difference_hash):
            distance = hamming(np.uint64(hash_function(original)), np.uint64(hash_function(variant)))
            assert distance <= 6
    for other in ("coffee", "rocket", "moon", "coins"):
        assert hamming(np.uint64(perceptual_hash(original)), np.uint64(perceptual_hash(photo(other, 256)))) > 16


def test_perceptual_hash_is_the_dct_phash():
    """An independent pHash: scipy's 1-D DCT-II along each axis (what imagehash does) on the same thumbnail."""
    from scipy.fftpack import dct

    image = photo("coffee")
    gray = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=3.0), dtype=float)
    low = dct(dct(gray, axis=0), axis=1)[:8, :8]
    bits = (low > np.median(low)).ravel()
    expected = int("".join("1" if bit else "0" for bit in bits), 2)
    assert perceptual_hash(image) == expected


def test_look_alikes_are_not_chained_into_one_group(tmp_path):
    """Many slightly different images (a gradient shifted step by step) are look-alikes, not copies: no
    giant duplicate group may form, so a group-aware split still has groups to split."""
    ramp = np.linspace(0, 255, 64)
    for step in range(40):
        pixels = np.clip(np.add.outer(ramp, ramp) / 2 + step * 0.8, 0, 255).astype(np.uint8)
        save(Image.fromarray(pixels).convert("RGB"), tmp_path / ("a" if step % 2 else "b") / f"{step}.png")
    report = check_data(tmp_path)
    sizes = np.bincount(report.group_ids)
    assert sizes.max() <= 8


def test_unreadable_files_are_listed_and_bad_folders_explained(tmp_path):
    save(photo("coffee", 48), tmp_path / "one" / "ok.png")
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n nothing")
    report = check_data(tmp_path)
    problems = report.problems()
    assert any("two has no usable image (1 unreadable)" in p for p in problems)
    assert any("at least two class folders" in p for p in problems)
    with pytest.raises(ConvlensError, match="no usable image"):
        report.raise_if_unusable()
    assert "skipped 1 unreadable image file(s)" in report.warnings()[0]


def test_unique_images_vote_on_the_class(made_folder, tmp_path):
    report = check_data(made_folder)
    kept, ambiguous = unique_images(report, report.indices())
    assert len(kept) == report.unique_count() - len(ambiguous)
    # hubble is filed once under c and once under b: a tie, so it is left out
    assert [names(report, g) for g in ambiguous] == [{"train/c/hubble_deep_field.png", "train/b/hubble_again.png"}]


def test_group_aware_splits_keep_groups_together():
    rng = np.random.default_rng(0)
    labels = np.array(["a", "b", "c"])[rng.integers(0, 3, 300)]
    groups = rng.integers(0, 120, 300)
    for train, validation in stratified_group_folds(labels, 5, 0, groups):
        assert not set(groups[train]) & set(groups[validation])
        assert len(train) + len(validation) == 300
    train, validation = stratified_split(labels, 0.2, 0, groups)
    assert not set(groups[train]) & set(groups[validation])
    assert 0.1 < len(validation) / 300 < 0.3
    train, validation = stratified_split(labels, 0.25, 3)
    for label in "abc":  # stratified: each class keeps its share on both sides within one image
        share = np.mean(labels == label)
        assert abs(np.mean(labels[validation] == label) - share) < 2 / len(validation) + 1e-9


def test_layouts(tmp_path):
    save(photo("coffee", 32), tmp_path / "plain" / "x" / "1.png")
    save(photo("coffee", 32), tmp_path / "split" / "train" / "x" / "1.png")
    save(photo("coffee", 32), tmp_path / "split" / "val" / "x" / "1.png")
    save(photo("coffee", 32), tmp_path / "only_train" / "train" / "x" / "1.png")
    assert find_layout(tmp_path / "plain").splits == {"all": tmp_path / "plain"}
    assert find_layout(tmp_path / "split").splits == {"train": tmp_path / "split" / "train",
                                                       "validation": tmp_path / "split" / "val"}
    assert find_layout(tmp_path / "only_train").splits == {"all": tmp_path / "only_train" / "train"}
    with pytest.raises(ConvlensError, match="data folder not found"):
        find_layout(tmp_path / "absent")


def test_leaf_leak_is_found_exactly(shared_data):
    """The README's measurement: 172 of 178 validation files are byte-identical copies of training files,
    557 distinct images in 804 files, one image filed as both normal and sick."""
    root = shared_data / "leaf"
    report = check_data(root)
    digests = {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(root.rglob("*.jpg"))}
    train_digests = {d for p, d in digests.items() if "train" in p.relative_to(root).parts[:1]}
    byte_copies = sum(1 for p, d in digests.items() if p.relative_to(root).parts[0] == "validation"
                      and d in train_digests)
    assert byte_copies == 172
    assert len(report.images) == 804 and len(set(digests.values())) == 557 == report.unique_count()
    leaks = report.leaks()
    assert len(leaks["exact"]) == 172 and len(report.indices("validation")) == 178
    assert [sorted(names(report, g)) for g in report.label_conflicts()] == [
        ["train/normal/86.jpg", "train/sick/106.jpg", "validation/sick/106.jpg"]]
    kept, ambiguous = unique_images(report, report.indices())
    assert len(kept) == 557 and not ambiguous  # the double-filed image goes to sick, 2 votes to 1
    assert dict(kept)[min(i for g in report.label_conflicts() for i in g)] == "sick"
    # --dedupe on the given split: the 172 identical and 1 near-duplicate validation images go, and so does
    # the double-filed image's validation copy; train keeps one copy each, less the normal/sick tie
    from convlens.training.data import split_for_training

    split, messages = split_for_training(report, 0.2, 0, dedupe=True)
    assert len(split.validation) == 178 - 173 and len(split.train) == 551 - 1
    assert not any(m.startswith("LEAK") for m in messages)


def test_cli_data_check(made_folder, tmp_path):
    from typer.testing import CliRunner

    from convlens.cli import app

    out = tmp_path / "check"
    result = CliRunner().invoke(app, ["data", "check", str(made_folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 of 6 validation images are identical" in " ".join(result.output.split())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["report"]["validation_identical_to_train"] == [
        ["validation/a/astronaut_copy.png", "train/a/astronaut.png"],
        ["validation/b/coffee_as_bmp.bmp", "train/b/coffee.png"]]
    arrays = np.load(out / "arrays.npz")
    assert arrays["input"].dtype == np.float32 and arrays["input"].shape[1:] == (96, 96, 3)
    assert (out / "duplicates.png").is_file()
