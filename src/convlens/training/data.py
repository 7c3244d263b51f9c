"""From a checked image folder to the images a run trains and validates on (given, made or K-fold splits)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from convlens.data.check import DataReport, leak_message, unique_images
from convlens.data.folders import ALL, TRAIN, VALIDATION, Sample, read_split, stratified_group_folds, stratified_split
from convlens.errors import ConvlensError


@dataclass
class Split:
    class_names: list[str]
    train: list[Sample]
    validation: list[Sample]
    method: str  # given, stratified, group-aware, file, or "fold i of K"
    details: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"method": self.method, "train": len(self.train), "validation": len(self.validation), **self.details}


def training_classes(report: DataReport) -> list[str]:
    return list(report.split_classes[TRAIN if report.layout.given_split else ALL])


def split_for_training(report: DataReport, val_split: float, seed: int, dedupe: bool,
                       split_file: str | Path | None = None) -> tuple[Split, list[str]]:
    """The run's split and the warnings to show: the folder's own, a split file's, or a stratified one made
    with ``seed`` (group-aware when ``dedupe``, so no image is on both sides)."""
    report.raise_if_unusable()
    classes = training_classes(report)
    messages = report.warnings(leaks=False)
    if split_file is not None:
        file_classes, train, validation = read_split(split_file, report.layout.root)
        if file_classes != classes:
            raise ConvlensError(f"{split_file} was made for classes {file_classes}, the folder has {classes}")
        split = Split(classes, train, validation, "file", {"file": str(split_file)})
    elif report.layout.given_split:
        split = _given_split(report, classes, dedupe, messages)
    else:
        split = _made_split(report, classes, val_split, seed, dedupe, messages)
    if not split.validation:
        raise ConvlensError("the validation set is empty" + (" after --dedupe removed the images it shares with "
                                                             "train; use --cv K --dedupe" if dedupe else ""))
    leak = leak_message_for(report, split.train, split.validation)
    if leak:
        messages.append(leak)
    return split, messages


def _given_split(report: DataReport, classes: list[str], dedupe: bool, messages: list[str]) -> Split:
    train_indices, validation_indices = report.indices(TRAIN), report.indices(VALIDATION)
    if not dedupe:
        return Split(classes, _samples(report, train_indices), _samples(report, validation_indices), "given")
    train, train_ambiguous = unique_images(report, train_indices)
    train_groups = {int(report.group_ids[i]) for i in train_indices}  # ambiguous ones too: they were in train
    leaking = {i for i in validation_indices if int(report.group_ids[i]) in train_groups}
    validation, validation_ambiguous = unique_images(report, [i for i in validation_indices if i not in leaking])
    details = {"dedupe": True, "validation_removed_as_in_train": len(leaking),
               "train_copies_removed": len(train_indices) - len(train) - sum(map(len, train_ambiguous)),
               "ambiguous_label_groups_removed": len(train_ambiguous) + len(validation_ambiguous)}
    messages.append(f"--dedupe: removed {len(leaking)} validation images that duplicate training images "
                    f"(identical or near), kept one copy of each identical image; train {len(train)} of "
                    f"{len(train_indices)}, validation {len(validation)} of {len(validation_indices)} images")
    return Split(classes, _labelled(report, train), _labelled(report, validation), "given", details)


def _made_split(report: DataReport, classes: list[str], val_split: float, seed: int, dedupe: bool,
                messages: list[str]) -> Split:
    indices = report.indices(ALL)
    if not dedupe:
        labels = [report.images[i].label for i in indices]
        train, validation = stratified_split(labels, val_split, seed)
        return Split(classes, _samples(report, [indices[k] for k in train]),
                     _samples(report, [indices[k] for k in validation]), "stratified",
                     {"val_split": val_split, "seed": seed})
    kept, ambiguous = unique_images(report, indices)
    labels = [label for _, label in kept]
    groups = [int(report.group_ids[i]) for i, _ in kept]
    train, validation = stratified_split(labels, val_split, seed, groups)
    messages.append(f"--dedupe: {len(kept)} distinct images of {len(indices)} files, split so that identical "
                    f"and near-duplicate images stay on one side")
    return Split(classes, _labelled(report, [kept[k] for k in train]), _labelled(report, [kept[k] for k in validation]),
                 "group-aware", {"val_split": val_split, "seed": seed, "dedupe": True,
                                 "ambiguous_label_groups_removed": len(ambiguous)})


def folds_for_cv(report: DataReport, folds: int, seed: int, dedupe: bool) -> tuple[list[Split], list[str]]:
    """Stratified K-fold over every image of the folder (a given split is pooled), group-aware: identical and
    near-duplicate images always fall in the same fold. With ``dedupe``, one copy of each identical image."""
    report.raise_if_unusable()
    classes = training_classes(report)
    messages = report.warnings(leaks=False)
    indices = report.indices()
    if dedupe:
        kept, ambiguous = unique_images(report, indices)
        messages.append(f"--dedupe: {len(kept)} distinct images of {len(indices)} files"
                        + (f"; left out {len(ambiguous)} filed equally under two classes" if ambiguous else ""))
    else:
        kept = [(i, report.images[i].label) for i in indices]
    labels = [label for _, label in kept]
    groups = [int(report.group_ids[i]) for i, _ in kept]
    splits = []
    for number, (train, validation) in enumerate(stratified_group_folds(labels, folds, seed, groups), start=1):
        splits.append(Split(classes, _labelled(report, [kept[k] for k in train]),
                            _labelled(report, [kept[k] for k in validation]), f"fold {number} of {folds}",
                            {"fold": number, "folds": folds, "seed": seed, "dedupe": dedupe,
                             "distinct_images": len(kept), "groups": len(set(groups))}))
    return splits, messages


def validation_leaks(report: DataReport, train: Sequence[Sample],
                     validation: Sequence[Sample]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(validation image, training image) index pairs: identical ones, then near duplicates only."""
    index = {info.path.resolve(): i for i, info in enumerate(report.images)}

    def ids(samples):
        return [index[s.path.resolve()] for s in samples if s.path.resolve() in index]

    train_exact = {int(report.exact_ids[i]): i for i in ids(train)}
    train_groups = {int(report.group_ids[i]): i for i in ids(train)}
    exact, near = [], []
    for i in ids(validation):
        if int(report.exact_ids[i]) in train_exact:
            exact.append((i, train_exact[int(report.exact_ids[i])]))
        elif int(report.group_ids[i]) in train_groups:
            near.append((i, train_groups[int(report.group_ids[i])]))
    return exact, near


def leak_message_for(report: DataReport, train: Sequence[Sample], validation: Sequence[Sample]) -> str | None:
    """The loud warning when validation images (identical or near) also appear in train, else None."""
    exact, near = validation_leaks(report, train, validation)
    if not exact and not near:
        return None
    return leak_message(report, len(exact), len(near), len(validation), (exact + near)[:3])


def _samples(report: DataReport, indices: Sequence[int]) -> list[Sample]:
    return [report.images[i].sample for i in indices]


def _labelled(report: DataReport, kept: Sequence[tuple[int, str]]) -> list[Sample]:
    return [Sample(report.images[i].path, label) for i, label in kept]
