"""``convlens data check``: what is in an image folder before anything is trained on it.

Class counts, image sizes, unreadable files, exact duplicates (identical decoded pixels) and near duplicates
(perceptual hashes: a 64-bit DCT pHash and a 64-bit difference hash must both be within ``near_distance``
bits), inside a split and across train/validation, and images filed under two classes. A near-duplicate
pair needs both hashes to agree because either one alone, at a distance that still catches re-encoded,
resized or watermarked copies, also pairs some distinct photos of similar leaves.

A near pair must also stand out from both images' neighbourhoods: its distance (pHash + dHash bits) at most
``NEIGHBOURHOOD_SHARE`` times the distance to each image's ``NEIGHBOURHOOD_RANK``-th nearest other image. On
varied photos (the leaf set) copies sit at a tenth to a half of that distance; on very uniform images (digits
upscaled from 8x8) distinct images are as close as the threshold, and this keeps them apart.

Duplicate groups are connected components (so a group-aware split keeps every copy on one side). Inside any
component of more than ``MAX_NEAR_GROUP`` distinct images the weakest near links are dropped, step by step,
until it breaks into groups that small: a long chain is a cluster of look-alikes, not copies.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from convlens.data.folders import ALL, TRAIN, VALIDATION, FolderLayout, Sample, find_layout, scan_split
from convlens.data.images import load_image
from convlens.errors import ConvlensError

NEAR_DISTANCE = 12  # bits of 64, for both hashes (see the module doc)
MAX_NEAR_GROUP = 8  # distinct images; a longer chain of near pairs is a cluster of look-alikes, not copies
NEIGHBOURHOOD_RANK = 8  # a near pair must be much closer than each image's 8th nearest other image ...
NEIGHBOURHOOD_SHARE = 0.6  # ... at most 0.6 times that distance (pHash + dHash bits)
EXAMPLES = 5  # example paths quoted in messages

Progress = Callable[[Iterable, int], Iterable]


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    split: str
    label: str
    width: int
    height: int
    pixel_hash: str  # sha1 of the decoded RGB pixels and size: equal only for identical images
    phash: int  # 64-bit DCT perceptual hash
    dhash: int  # 64-bit difference hash

    @property
    def sample(self) -> Sample:
        return Sample(self.path, self.label)


def perceptual_hash(image: Image.Image) -> int:
    """The DCT pHash: 32x32 grayscale, 2-D DCT, the 8x8 lowest frequencies against their median."""
    from scipy.fft import dctn

    gray = np.asarray(_gray(image).resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=3.0), dtype=np.float64)
    low = dctn(gray, type=2)[:8, :8]
    return _pack_bits(low > np.median(low))


def difference_hash(image: Image.Image) -> int:
    """The dHash: 9x8 grayscale, is each pixel brighter than its left neighbour."""
    gray = np.asarray(_gray(image).resize((9, 8), Image.Resampling.LANCZOS, reducing_gap=3.0), dtype=np.float64)
    return _pack_bits(gray[:, 1:] > gray[:, :-1])


def _gray(image: Image.Image) -> Image.Image:
    return image if image.mode == "L" else image.convert("L")


def _pack_bits(bits: np.ndarray) -> int:
    return int(np.packbits(bits.ravel().astype(np.uint8)).view(">u8")[0])


def pixel_hash(image: Image.Image) -> str:
    digest = hashlib.sha1(f"{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise distances between uint64 hash arrays (broadcast)."""
    differing = np.bitwise_xor(a, b)
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(differing).astype(np.int16)
    return np.unpackbits(differing[..., None].view(np.uint8), axis=-1).sum(axis=-1, dtype=np.int16)


@dataclass
class DataReport:
    """Everything ``check_data`` found; ``images`` are the readable ones, in folder order."""

    layout: FolderLayout
    class_names: list[str]
    split_classes: dict[str, list[str]]
    images: list[ImageInfo]
    corrupt: list[tuple[Path, str]] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    near_distance: int = NEAR_DISTANCE
    near_pairs: list[tuple[int, int, int, int]] = field(default_factory=list)  # i, j, phash bits, dhash bits
    look_alike_pairs_dropped: int = 0  # near pairs dropped to break chains of look-alikes (see the module doc)

    @property
    def splits(self) -> list[str]:
        return list(self.layout.splits)

    def indices(self, split: str | None = None) -> list[int]:
        return [i for i, info in enumerate(self.images) if split is None or info.split == split]

    @cached_property
    def exact_ids(self) -> np.ndarray:
        """Per image, the id of its group of identical-pixel images."""
        ids: dict[str, int] = {}
        return np.array([ids.setdefault(info.pixel_hash, len(ids)) for info in self.images], dtype=np.int64)

    @cached_property
    def group_ids(self) -> np.ndarray:
        """Per image, the id of its duplicate group: connected over exact and near duplicates."""
        return duplicate_components(self.exact_ids, self.near_pairs)

    def exact_groups(self, indices: Sequence[int] | None = None) -> list[list[int]]:
        """Groups of two or more identical images (among ``indices``)."""
        return _groups(self.exact_ids, indices)

    def near_groups(self, indices: Sequence[int] | None = None) -> list[list[int]]:
        """Duplicate groups that hold more than one distinct image (near duplicates, possibly with copies)."""
        return [g for g in _groups(self.group_ids, indices) if len({int(self.exact_ids[i]) for i in g}) > 1]

    def class_counts(self) -> dict[str, dict[str, int]]:
        counts = {split: dict.fromkeys(self.split_classes[split], 0) for split in self.splits}
        for info in self.images:
            counts[info.split][info.label] = counts[info.split].get(info.label, 0) + 1
        return counts

    def empty_classes(self) -> dict[str, list[str]]:
        return {split: [name for name, n in counts.items() if n == 0] for split, counts in self.class_counts().items()}

    def unique_count(self, indices: Sequence[int] | None = None) -> int:
        chosen = self.exact_ids if indices is None else self.exact_ids[list(indices)]
        return len(np.unique(chosen))

    def redundant_copies(self, split: str) -> int:
        """Files in ``split`` that are exact copies of another file of the same split."""
        indices = self.indices(split)
        return len(indices) - self.unique_count(indices)

    def leaks(self) -> dict[str, list[int]]:
        """Validation images with an identical image in train (``exact``), or only a near one (``near``)."""
        if not self.layout.given_split:
            return {"exact": [], "near": []}
        train_exact = {int(self.exact_ids[i]) for i in self.indices(TRAIN)}
        train_groups = {int(self.group_ids[i]) for i in self.indices(TRAIN)}
        exact, near = [], []
        for i in self.indices(VALIDATION):
            if int(self.exact_ids[i]) in train_exact:
                exact.append(i)
            elif int(self.group_ids[i]) in train_groups:
                near.append(i)
        return {"exact": exact, "near": near}

    def leak_partner(self, index: int) -> int | None:
        """A training image that duplicates validation image ``index`` (identical first, else near)."""
        train = self.indices(TRAIN)
        for same in (self.exact_ids, self.group_ids):
            partner = next((j for j in train if same[j] == same[index]), None)
            if partner is not None:
                return partner
        return None

    def label_conflicts(self, near: bool = False) -> list[list[int]]:
        """Duplicate groups filed under more than one class (identical images; with ``near``, near ones too)."""
        groups = _groups(self.group_ids if near else self.exact_ids, None)
        return [g for g in groups if len({self.images[i].label for i in g}) > 1]

    def size_stats(self) -> dict[str, float]:
        if not self.images:
            return {}
        widths = np.array([info.width for info in self.images])
        heights = np.array([info.height for info in self.images])
        return {"width_min": int(widths.min()), "width_median": float(np.median(widths)),
                "width_max": int(widths.max()), "height_min": int(heights.min()),
                "height_median": float(np.median(heights)), "height_max": int(heights.max())}

    def problems(self) -> list[str]:
        """What makes the folder unusable for training (each a one-line message)."""
        problems = []
        for split, names in self.empty_classes().items():
            where = self.layout.splits[split]
            for name in names:
                bad = sum(1 for path, _ in self.corrupt if path.is_relative_to(where / name))
                reason = f" ({bad} unreadable)" if bad else ""
                problems.append(f"class folder {where / name} has no usable image{reason}")
        source = self.layout.splits.get(TRAIN) or self.layout.splits[ALL]
        usable = {info.label for info in self.images if info.split in (TRAIN, ALL)}
        if len(usable) < 2:
            problems.append(f"{source} needs at least two class folders with images, found {len(usable)}"
                            + (f" ({', '.join(sorted(usable))})" if usable else ""))
        if self.layout.given_split:
            extra = sorted(set(self.split_classes[VALIDATION]) - set(self.split_classes[TRAIN]))
            if extra:
                problems.append(f"validation classes missing from train: {', '.join(extra)}")
        return problems

    def raise_if_unusable(self) -> None:
        problems = self.problems()
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise ConvlensError(problems[0] + more)

    def warnings(self, leaks: bool = True) -> list[str]:
        """The loud messages: unreadable files skipped, validation leaking from train, label conflicts."""
        messages = []
        if self.corrupt:
            listed = ", ".join(f"{path} ({reason})" for path, reason in self.corrupt[:EXAMPLES])
            more = f", ... {len(self.corrupt) - EXAMPLES} more" if len(self.corrupt) > EXAMPLES else ""
            messages.append(f"skipped {len(self.corrupt)} unreadable image file(s): {listed}{more}")
        found = self.leaks()
        if leaks and (found["exact"] or found["near"]):
            pairs = [(i, self.leak_partner(i)) for i in (found["exact"] + found["near"])[:3]]
            messages.append(leak_message(self, len(found["exact"]), len(found["near"]),
                                         len(self.indices(VALIDATION)), pairs))
        conflicts = self.label_conflicts(near=True)
        if conflicts:
            examples = "; ".join(" = ".join(self.display(i) for i in group) for group in conflicts[:3])
            messages.append(f"{len(conflicts)} image(s) filed under more than one class: {examples}")
        return messages

    def display(self, index: int | None) -> str:
        if index is None:
            return "?"
        path = self.images[index].path
        return str(path.relative_to(self.layout.root)) if path.is_relative_to(self.layout.root) else str(path)

    def to_dict(self) -> dict:
        leaks = self.leaks()
        splits = {}
        for split in self.splits:
            indices = self.indices(split)
            splits[split] = {
                "folder": str(self.layout.splits[split]),
                "images": len(indices),
                "unique_images": self.unique_count(indices),
                "class_counts": self.class_counts()[split],
                "exact_duplicate_copies": self.redundant_copies(split),
                "exact_duplicate_groups": [[self.display(i) for i in g] for g in self.exact_groups(indices)],
                "near_duplicate_groups": [[self.display(i) for i in g] for g in self.near_groups(indices)],
            }
        return {
            "data_dir": str(self.layout.root),
            "given_split": self.layout.given_split,
            "class_names": self.class_names,
            "images": len(self.images),
            "unique_images": self.unique_count(),
            "splits": splits,
            "image_size": self.size_stats(),
            "corrupt": [{"path": str(path), "reason": reason} for path, reason in self.corrupt],
            "ignored_non_images": [str(path) for path in self.ignored],
            "near_distance_bits": self.near_distance,
            "near_pairs": len(self.near_pairs),
            "look_alike_pairs_dropped": self.look_alike_pairs_dropped,
            "near_duplicate_groups": [[self.display(i) for i in g] for g in self.near_groups()],
            "validation_identical_to_train": [[self.display(i), self.display(self.leak_partner(i))]
                                              for i in leaks["exact"]],
            "validation_near_duplicate_of_train": [[self.display(i), self.display(self.leak_partner(i))]
                                                   for i in leaks["near"]],
            "label_conflicts": [[self.display(i) for i in g] for g in self.label_conflicts(near=True)],
            "problems": self.problems(),
        }


def leak_message(report: DataReport, exact: int, near: int, validation: int,
                 examples: Sequence[tuple[int, int | None]]) -> str:
    shown = "; ".join(f"{report.display(i)} = {report.display(j)}" for i, j in examples)
    return (f"LEAK: {exact} of {validation} validation images are identical to training images and {near} more "
            f"are near duplicates of them: on those, validation accuracy measures memory, not generalisation "
            f"(e.g. {shown}). Use --dedupe, or --cv K --dedupe.")


def _groups(ids: np.ndarray, indices: Sequence[int] | None) -> list[list[int]]:
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(ids)) if indices is None else indices:
        members[int(ids[i])].append(i)
    return [group for group in members.values() if len(group) > 1]


def check_data(data_dir: str | Path, near_distance: int = NEAR_DISTANCE,
               progress: Progress | None = None) -> DataReport:
    """Decode every image of ``data_dir`` once and report on it (see the module doc); raises nothing for
    bad data: ``report.problems()`` and ``report.raise_if_unusable()`` say what stops training."""
    layout = find_layout(data_dir)
    split_classes, samples, ignored = {}, [], []
    for split, folder in layout.splits.items():
        classes, found, skipped = scan_split(folder)
        split_classes[split] = classes
        samples += [(split, sample) for sample in found]
        ignored += skipped
    class_names = sorted({name for names in split_classes.values() for name in names})
    images, corrupt = [], []
    iterator = progress(samples, len(samples)) if progress is not None else samples
    for split, sample in iterator:
        try:
            image = load_image(sample.path)
        except ConvlensError as exc:
            corrupt.append((sample.path, str(exc).removeprefix(f"{sample.path}: ")))
            continue
        gray = image.convert("L")
        images.append(ImageInfo(sample.path, split, sample.label, image.width, image.height, pixel_hash(image),
                                perceptual_hash(gray), difference_hash(gray)))
    report = DataReport(layout, class_names, split_classes, images, corrupt, ignored, near_distance)
    candidates = find_near_pairs(images, report.exact_ids, near_distance)
    report.near_pairs = break_chains(candidates, report.exact_ids)
    report.look_alike_pairs_dropped = len(candidates) - len(report.near_pairs)
    return report


def find_near_pairs(images: Sequence[ImageInfo], exact_ids: np.ndarray,
                    near_distance: int) -> list[tuple[int, int, int, int]]:
    """Pairs of distinct images (one representative per identical group) within ``near_distance`` bits on
    both hashes and standing out from their neighbourhoods (see the module doc); compared in row blocks so
    memory stays bounded on large folders."""
    first: dict[int, int] = {}
    for i, group in enumerate(exact_ids):
        first.setdefault(int(group), i)
    representatives = np.array(sorted(first.values()), dtype=np.int64)
    phashes = np.array([images[i].phash for i in representatives], dtype=np.uint64)
    dhashes = np.array([images[i].dhash for i in representatives], dtype=np.uint64)
    count = len(representatives)
    block = max(1, (1 << 22) // max(count, 1))

    def distances(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return (hamming(phashes[start:stop, None], phashes[None, :]),
                hamming(dhashes[start:stop, None], dhashes[None, :]))

    neighbourhood = np.full(count, np.inf)
    rank = min(NEIGHBOURHOOD_RANK, count - 1)
    if rank >= 2:  # the distance (pHash + dHash bits) to each image's rank-th nearest other image
        for start in range(0, count, block):
            p, d = distances(start, min(start + block, count))
            total = (p + d).astype(np.float64)
            total[np.arange(len(total)), np.arange(start, start + len(total))] = np.inf  # not itself
            neighbourhood[start:start + len(total)] = np.partition(total, rank - 1, axis=1)[:, rank - 1]
    pairs = []
    for start in range(0, count, block):
        p, d = distances(start, min(start + block, count))
        rows, cols = np.nonzero((p <= near_distance) & (d <= near_distance))
        for row, col in zip(rows, cols, strict=True):
            i = start + row
            if col <= i:
                continue
            if p[row, col] + d[row, col] > NEIGHBOURHOOD_SHARE * min(neighbourhood[i], neighbourhood[col]):
                continue  # as close as its other neighbours: a look-alike, not a copy
            pairs.append((int(representatives[i]), int(representatives[col]), int(p[row, col]), int(d[row, col])))
    return pairs


def duplicate_components(exact_ids: np.ndarray, pairs: Sequence[tuple[int, int, int, int]]) -> np.ndarray:
    """Component id per image over identical images and near ``pairs``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    count = len(exact_ids)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    first_of: dict[int, int] = {}
    rows = list(range(count))
    cols = [first_of.setdefault(int(group), i) for i, group in enumerate(exact_ids)]  # copies to the first
    rows += [i for i, _, _, _ in pairs]
    cols += [j for _, j, _, _ in pairs]
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(count, count))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def break_chains(pairs: Sequence[tuple[int, int, int, int]], exact_ids: np.ndarray,
                 max_group: int = MAX_NEAR_GROUP) -> list[tuple[int, int, int, int]]:
    """Drop the weakest near pairs (largest pHash + dHash distance) inside components of more than
    ``max_group`` distinct images, repeatedly, until none is that large."""
    pairs = list(pairs)
    while pairs:
        components = duplicate_components(exact_ids, pairs)
        distinct = Counter(components[first] for first in {int(g): i for i, g in enumerate(exact_ids)}.values())
        oversized = {component for component, size in distinct.items() if size > max_group}
        if not oversized:
            break
        weakest: dict[int, int] = {}
        for i, _, p, d in pairs:
            if components[i] in oversized:
                weakest[components[i]] = max(weakest.get(components[i], 0), p + d)
        pairs = [pair for pair in pairs if components[pair[0]] not in oversized
                 or pair[2] + pair[3] < weakest[components[pair[0]]]]
    return pairs


def unique_images(report: DataReport, indices: Sequence[int]) -> tuple[list[tuple[int, str]], list[list[int]]]:
    """One ``(index, class)`` per group of identical images among ``indices`` (the first in folder order),
    with the class most of its copies are filed under; groups split evenly between classes are left out and
    returned second."""
    members: dict[int, list[int]] = defaultdict(list)
    for i in indices:
        members[int(report.exact_ids[i])].append(i)
    kept, ambiguous = [], []
    for group in members.values():
        votes = Counter(report.images[i].label for i in group).most_common()
        if len(votes) > 1 and votes[0][1] == votes[1][1]:
            ambiguous.append(group)
            continue
        kept.append((group[0], votes[0][0]))
    return kept, ambiguous
