"""The figures of a run: learning curves, the validation confusion matrix, cross-validation folds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

import convlens.render  # noqa: F401 - selects the Agg backend before pyplot is imported
from convlens.training.loop import EpochRecord


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray, classes: int) -> np.ndarray:
    """``counts[true, predicted]``."""
    return np.bincount(np.asarray(targets) * classes + np.asarray(predictions),
                       minlength=classes * classes).reshape(classes, classes)


def curves_figure(history: Sequence[EpochRecord], best_epoch: int | None, title: str) -> Figure:
    """Loss and accuracy per epoch, train against validation; the best epoch and any unfreezing marked."""
    import matplotlib.pyplot as plt

    epochs = [r.epoch for r in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    for axis, key, label in ((loss_axis, "loss", "loss (cross-entropy)"), (accuracy_axis, "accuracy", "accuracy (%)")):
        scale = 100.0 if key == "accuracy" else 1.0
        axis.plot(epochs, [scale * getattr(r, f"train_{key}") for r in history], "o-", ms=3, label="train")
        axis.plot(epochs, [scale * getattr(r, f"val_{key}") for r in history], "s-", ms=3, label="validation")
        if best_epoch is not None:
            axis.axvline(best_epoch, color="0.6", ls=":", lw=1, label=f"best (epoch {best_epoch})")
        unfrozen = next((r.epoch for r in history if r.phase == "full"), None)
        if unfrozen is not None and history[0].phase == "frozen":
            axis.axvline(unfrozen - 0.5, color="tab:red", ls="--", lw=1, label="backbone unfrozen")
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    accuracy_axis.set_ylim(top=101)
    if len(epochs) < 15:
        for axis in (loss_axis, accuracy_axis):
            axis.set_xticks(epochs)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return figure


def confusion_figure(counts: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """Counts with row percentages (the share of each true class given each prediction)."""
    import matplotlib.pyplot as plt

    classes = len(class_names)
    side = min(12.0, 2.2 + 0.55 * classes)
    figure, axis = plt.subplots(figsize=(side + 1.2, side))
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    image = axis.imshow(shares * 100, cmap="Blues", vmin=0, vmax=100)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="% of the true class")
    fontsize = 9 if classes <= 10 else 6
    for row in range(classes):
        for col in range(classes):
            colour = "white" if shares[row, col] > 0.6 else "black"
            axis.text(col, row, f"{counts[row, col]}\n{100 * shares[row, col]:.0f}%", ha="center", va="center",
                      fontsize=fontsize, color=colour)
    tilted = classes > 4
    axis.set_xticks(range(classes), class_names, rotation=45 if tilted else 0, ha="right" if tilted else "center")
    axis.set_yticks(range(classes), class_names)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def folds_figure(histories: Sequence[Sequence[EpochRecord]], title: str, majority: float | None = None) -> Figure:
    """Validation accuracy per epoch of every fold, with the mean across folds (and the share of the largest
    class: what always predicting it would score)."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for number, history in enumerate(histories, start=1):
        axis.plot([r.epoch for r in history], [100 * r.val_accuracy for r in history], lw=1, alpha=0.7,
                  label=f"fold {number}")
    length = min(len(h) for h in histories)
    mean = np.mean([[100 * r.val_accuracy for r in h[:length]] for h in histories], axis=0)
    axis.plot([r.epoch for r in histories[0][:length]], mean, "k-", lw=2.2, label="mean")
    if majority is not None:
        axis.axhline(100 * majority, color="0.4", ls="--", lw=1, label="largest class")
    unfrozen = next((r.epoch for r in histories[0] if r.phase == "full"), None)
    if unfrozen is not None and histories[0][0].phase == "frozen":
        axis.axvline(unfrozen - 0.5, color="tab:red", ls="--", lw=1, label="backbone unfrozen")
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation accuracy (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, ncol=2)
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def save(figure: Figure, path) -> None:
    import matplotlib.pyplot as plt

    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
