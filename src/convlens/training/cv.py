"""``cross_validate``: stratified, group-aware K-fold training; mean and spread of validation accuracy."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convlens.data.check import check_data
from convlens.training import plots
from convlens.training.config import TrainConfig
from convlens.training.data import folds_for_cv
from convlens.training.loop import TrainingEvents
from convlens.training.run import TrainResult, fit, fresh_run_dir


@dataclass
class CVResult:
    """Per-fold runs (``out/fold_N``, each a full run directory) and their validation accuracies.

    ``final`` is the accuracy after the last epoch, the honest figure (the number of epochs was fixed
    beforehand); ``best`` picks each fold's best epoch on its own validation fold, which flatters."""

    out: Path
    folds: list[TrainResult]
    wall_seconds: float

    @property
    def final_accuracies(self) -> np.ndarray:
        return np.array([fold.final.val_accuracy for fold in self.folds])

    @property
    def best_accuracies(self) -> np.ndarray:
        return np.array([fold.best.val_accuracy for fold in self.folds])

    def to_dict(self) -> dict:
        final, best = self.final_accuracies, self.best_accuracies
        return {"folds": len(self.folds),
                "final_val_accuracy_mean": float(final.mean()), "final_val_accuracy_std": float(final.std()),
                "best_val_accuracy_mean": float(best.mean()), "best_val_accuracy_std": float(best.std()),
                "per_fold": [{"fold": number, "run_dir": str(fold.run_dir), "train_size": fold.train_size,
                              "validation_size": fold.validation_size,
                              "final_val_accuracy": fold.final.val_accuracy, "final_train_accuracy":
                              fold.final.train_accuracy, "best_val_accuracy": fold.best.val_accuracy,
                              "best_epoch": fold.best_epoch, "wall_seconds": round(fold.wall_seconds, 2)}
                             for number, fold in enumerate(self.folds, start=1)],
                "std": "population standard deviation over folds (numpy ddof=0)",
                "wall_seconds": round(self.wall_seconds, 2)}


def cross_validate(data_dir: str | Path, out: str | Path, folds: int, config: TrainConfig | None = None,
                   events: TrainingEvents | None = None, force: bool = False) -> CVResult:
    """Train ``folds`` runs into ``out/fold_1`` ... and write ``out/cv.json`` and ``out/cv.png``. Every image
    of the folder is used (a given train/validation split is pooled); identical and near-duplicate images
    always share a fold; ``config.dedupe`` keeps one copy of each identical image."""
    from convlens.output import check_out

    config = (config or TrainConfig()).validate()
    check_out(out, force=force, run=True)  # before the data check, which can take minutes
    events = events or TrainingEvents()
    started = time.perf_counter()
    report = check_data(data_dir, config.near_distance,
                        progress=lambda items, total: events.track(items, total, "checking images"))
    splits, messages = folds_for_cv(report, folds, config.seed, config.dedupe)
    for message in messages:
        events.warning(message)
    out = fresh_run_dir(out, force)
    results = []
    for number, split in enumerate(splits, start=1):
        events.fold_started(number, folds, len(split.train), len(split.validation))
        results.append(fit(out / f"fold_{number}", config, split, report, events))
    result = CVResult(out, results, time.perf_counter() - started)
    record = {"command": "train --cv", "data_dir": str(report.layout.root.resolve()),
              "training": config.to_dict(), **result.to_dict(),
              "distinct_images": splits[0].details["distinct_images"], "groups": splits[0].details["groups"]}
    (out / "cv.json").write_text(json.dumps(record, indent=2))
    final = result.final_accuracies
    size = f" {results[0].img_size} px"
    title = (f"{config.arch}{size}, {folds}-fold cross-validation on {report.layout.root.name}: "
             f"{100 * final.mean():.1f} ± {100 * final.std():.1f}% after {config.epochs} epochs")
    labels = [s.label for split in splits for s in split.validation]
    majority = max(labels.count(name) for name in set(labels)) / len(labels)
    plots.save(plots.folds_figure([fold.history for fold in results], title, majority), out / "cv.png")
    return result
