"""The table over methods: per method and score, the mean over images and a 95 % bootstrap interval."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np

METRICS = ("deletion", "insertion", "road", "drop", "pointing", "sanity")
# metric -> the scores it gives, each (name, whether higher is better, what it is)
SCORES = {
    "deletion": (("deletion", False, "deletion AUC (probability; lower is better)"),),
    "insertion": (("insertion", True, "insertion AUC (probability; higher is better)"),),
    "road": (("road", True, "ROAD combined: (mean LeRF - mean MoRF) / 2 (higher is better)"),),
    "drop": (("drop", False, "average drop in confidence, fraction (lower is better)"),
             ("increase", True, "increase in confidence, fraction of images (higher is better)")),
    "pointing": (("pointing", True, "pointing game accuracy, mean over object classes (higher is better)"),),
    "sanity": (("sanity_spearman", False, "Spearman similarity to the original map under cascading "
                                          "randomisation, mean over the cascade (lower is better)"),
               ("sanity_ssim", False, "SSIM to the original map, mean over the cascade (lower is better)"),
               ("sanity_hog", False, "Pearson correlation of HOG features, mean over the cascade "
                                     "(lower is better)")),
}
NOT_APPLICABLE = "not applicable"


def score_names(metrics: Sequence[str]) -> list[str]:
    return [score[0] for metric in metrics for score in SCORES[metric]]


def higher_is_better(score: str) -> bool:
    return next(s[1] for scores in SCORES.values() for s in scores if s[0] == score)


def bootstrap_mean(values: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of the finite values and the 2.5 / 97.5 percentiles of the means of ``resamples`` resamples."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(low), float(high)


def bootstrap_class_mean(hits: np.ndarray, names: Sequence[str], resamples: int = 2000,
                         seed: int = 0) -> tuple[float, float, float]:
    """Mean over classes of the per-class hit rate; the interval from resampling the trials (classes missing
    from a resample are left out of its mean)."""
    hits = np.asarray(hits, dtype=np.float64)
    if len(hits) == 0:
        return float("nan"), float("nan"), float("nan")
    labels = list(dict.fromkeys(names))
    member = np.array([labels.index(name) for name in names])
    picks = np.random.default_rng(seed).integers(0, len(hits), (resamples, len(hits)))
    cells = (np.arange(resamples)[:, None] * len(labels) + member[picks]).ravel()  # (resample, class) pairs
    counts = np.bincount(cells, minlength=resamples * len(labels)).reshape(resamples, -1)
    totals = np.bincount(cells, weights=hits[picks].ravel(), minlength=resamples * len(labels))
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = totals.reshape(resamples, -1) / counts
    means = np.nanmean(np.where(counts > 0, rates, np.nan), axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    per_class = [hits[member == k].mean() for k in range(len(labels))]
    return float(np.mean(per_class)), float(low), float(high)


def table_csv(rows: Sequence[dict], scores: Sequence[str]) -> str:
    """``method,SCORE,SCORE_low,SCORE_high,...,note``; ``not applicable`` in the cells of such methods."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", *[f"{s}{suffix}" for s in scores for suffix in ("", "_low", "_high")], "note"])
    for row in rows:
        cells = []
        for score in scores:
            entry = row["scores"].get(score)
            cells += [NOT_APPLICABLE] * 3 if entry is None else [_number(v) for v in entry]
        writer.writerow([row["method"], *cells, row.get("note", "")])
    return buffer.getvalue()


def _number(value: float) -> str:
    return "" if value is None or not np.isfinite(value) else f"{value:.6g}"
