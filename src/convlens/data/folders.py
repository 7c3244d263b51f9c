"""Image-folder datasets: one subfolder per class, a given or a made train/validation split.

Layouts: ``DATA_DIR/train/CLASS/*`` beside ``DATA_DIR/validation/CLASS/*`` (or ``val/``) is a given split,
used as it is; ``DATA_DIR/CLASS/*`` (or a lone ``DATA_DIR/train/CLASS/*``) is split here, stratified and
seeded. Images are found by extension, recursively inside each class folder; other files are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.functional import pil_to_tensor

from convlens.data.images import IMAGE_EXTENSIONS, load_image
from convlens.errors import ConvlensError

TRAIN, VALIDATION, ALL = "train", "validation", "all"
VALIDATION_FOLDERS = ("validation", "val")
CACHE_LIMIT_BYTES = 1 << 30  # decoded uint8 images kept in memory up to this size; beyond it, decode per item

# The leaf study's Keras ImageDataGenerator(shear_range=0.1, zoom_range=0.1, horizontal_flip=True). Keras
# before 2.2 read shear_range in radians (0.1 rad = 5.7 degrees); later versions read degrees.
KERAS_SHEAR_DEGREES = float(np.degrees(0.1))
KERAS_ZOOM = 0.1


@dataclass(frozen=True)
class Sample:
    """One image file and the class folder it is filed under."""

    path: Path
    label: str


@dataclass(frozen=True)
class FolderLayout:
    """Where the class folders are: ``{"train": ..., "validation": ...}`` for a given split, else ``{"all": ...}``."""

    root: Path
    splits: dict[str, Path]

    @property
    def given_split(self) -> bool:
        return VALIDATION in self.splits


def find_layout(root: str | Path) -> FolderLayout:
    root = Path(root)
    if not root.is_dir():
        raise ConvlensError(f"data folder not found: {root}")
    train = root / TRAIN
    validation = next((root / name for name in VALIDATION_FOLDERS if (root / name).is_dir()), None)
    if train.is_dir() and validation is not None:
        return FolderLayout(root, {TRAIN: train, VALIDATION: validation})
    if train.is_dir() and not _class_folders(root, skip=(TRAIN,)):
        return FolderLayout(root, {ALL: train})
    return FolderLayout(root, {ALL: root})


def _class_folders(folder: Path, skip: Sequence[str] = ()) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in skip)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def scan_split(folder: Path) -> tuple[list[str], list[Sample], list[Path]]:
    """Class names (every subfolder, even an empty one), the image files in them, the other files ignored."""
    classes, samples, ignored = [], [], []
    for class_folder in _class_folders(folder):
        classes.append(class_folder.name)
        for path in sorted(p for p in class_folder.rglob("*") if p.is_file()):
            if path.name.startswith("."):
                continue
            if is_image_file(path):
                samples.append(Sample(path, class_folder.name))
            else:
                ignored.append(path)
    return classes, samples, ignored


def keras_augmentation(shear_degrees: float = KERAS_SHEAR_DEGREES, zoom: float = KERAS_ZOOM) -> v2.Transform:
    """Random shear, zoom and horizontal flip on uint8 ``3 x H x W`` tensors (the leaf study's augmentation)."""
    return v2.Compose([
        v2.RandomAffine(degrees=0.0, shear=shear_degrees, scale=(1.0 - zoom, 1.0 + zoom),
                        interpolation=v2.InterpolationMode.BILINEAR),
        v2.RandomHorizontalFlip(),
    ])


class ImageFolderDataset(Dataset):
    """``(uint8 3 x H x W tensor, class index)`` items: each image decoded once, resized and cropped by
    ``geometry`` (the model's own preprocessing), kept in memory when the whole set fits in
    ``cache_limit`` bytes, then passed through ``transform`` (augmentation) on every access.

    Normalisation is left to the training loop, on whole batches on the device.
    """

    def __init__(self, samples: Sequence[Sample], class_names: Sequence[str],
                 geometry: Callable[[Image.Image], Image.Image], size: tuple[int, int],
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 cache_limit: int = CACHE_LIMIT_BYTES) -> None:
        self.samples = list(samples)
        self.class_names = list(class_names)
        index = {name: i for i, name in enumerate(self.class_names)}
        unknown = sorted({s.label for s in self.samples} - set(index))
        if unknown:
            raise ConvlensError(f"images filed under classes the model does not have: {', '.join(unknown)}")
        self.targets = torch.tensor([index[s.label] for s in self.samples], dtype=torch.long)
        self.geometry = geometry
        self.transform = transform
        self.cached: torch.Tensor | None = None
        if len(self.samples) * 3 * size[0] * size[1] <= cache_limit:
            self.cached = torch.stack([self._decode(i) for i in range(len(self.samples))]) if self.samples else None

    def _decode(self, index: int) -> torch.Tensor:
        return pil_to_tensor(self.geometry(load_image(self.samples[index].path)))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = self.cached[index] if self.cached is not None else self._decode(index)
        if self.transform is not None:
            pixels = self.transform(pixels)
        return pixels, self.targets[index]


def stratified_split(labels: Sequence[str], val_fraction: float, seed: int,
                     groups: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices, stratified by label; with ``groups``, no group is on both sides."""
    if not 0.0 < val_fraction < 1.0:
        raise ConvlensError(f"--val-split must be between 0 and 1, got {val_fraction}")
    labels = np.asarray(labels)
    positions = np.arange(len(labels))
    if groups is None:
        from sklearn.model_selection import train_test_split

        smallest = min(np.unique(labels, return_counts=True)[1])
        stratify = labels if smallest >= 2 else None
        train, validation = train_test_split(positions, test_size=val_fraction, random_state=seed,
                                             stratify=stratify)
        return np.sort(train), np.sort(validation)
    # A group-aware split is the first fold of a stratified group K-fold with K = 1 / fraction.
    folds = max(2, round(1.0 / val_fraction))
    return stratified_group_folds(labels, folds, seed, groups)[0]


def stratified_group_folds(labels: Sequence[str], folds: int, seed: int,
                           groups: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """K (train, validation) index pairs, stratified by label, every group inside one fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels, groups = np.asarray(labels), np.asarray(groups)
    if folds < 2:
        raise ConvlensError(f"--cv needs at least 2 folds, got {folds}")
    if len(np.unique(groups)) < folds:
        raise ConvlensError(f"{len(np.unique(groups))} distinct images cannot fill {folds} folds; use fewer")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(np.sort(train), np.sort(validation))
            for train, validation in splitter.split(np.zeros(len(labels)), labels, groups)]


def write_split(path: Path, root: Path, class_names: Sequence[str], train: Sequence[Sample],
                validation: Sequence[Sample], **details) -> None:
    """The split as paths relative to ``root``, so ``--split FILE`` (and ``--resume``) reuse it exactly."""

    def rows(samples):
        return [[str(_relative(s.path, root)), s.label] for s in samples]

    record = {"data_dir": str(root.resolve()), "class_names": list(class_names), **details,
              "train": rows(train), "validation": rows(validation)}
    path.write_text(json.dumps(record, indent=1))


def read_split(path: str | Path, root: str | Path | None = None) -> tuple[list[str], list[Sample], list[Sample]]:
    """Class names, train and validation samples of a split file (paths under ``root`` or the recorded folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "split.json"
    try:
        record = json.loads(path.read_text())
        base = Path(root) if root is not None else Path(record["data_dir"])
        train = [Sample(base / rel, label) for rel, label in record["train"]]
        validation = [Sample(base / rel, label) for rel, label in record["validation"]]
        classes = list(record["class_names"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConvlensError(f"{path}: not a readable split file ({exc.__class__.__name__}: {exc})") from None
    missing = [s.path for s in train + validation if not s.path.is_file()]
    if missing:
        raise ConvlensError(f"{path}: {len(missing)} listed images are missing under {base} (e.g. {missing[0]})")
    return classes, train, validation


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.resolve().relative_to(root.resolve())
    except ValueError:
        return path.resolve()
