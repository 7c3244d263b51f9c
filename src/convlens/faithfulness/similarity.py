"""The sanity checks' similarities of two stacks of maps, each computed for the whole stack at once.

Spearman rank correlation (average ranks on ties, as ``scipy.stats.spearmanr`` and Quantus), SSIM as skimage's
``structural_similarity`` with its defaults (7 x 7 uniform window, sample covariance, the data range of each
pair) and the Pearson correlation of HOG features as skimage's ``hog`` with its defaults (9 orientations, 8 x 8
cells, 3 x 3 blocks, L2-Hys). skimage computes one image per call; here one array operation covers every pair
of an ``N x H x W`` stack (a sanity check compares every image at every checkpoint of the cascade).
"""

from __future__ import annotations

import numpy as np

SSIM_WINDOW = 7
HOG_ORIENTATIONS, HOG_CELL, HOG_BLOCK = 9, 8, 3
CHUNK_PIXELS = 1 << 16


def normalised(maps: np.ndarray) -> np.ndarray:
    """``|map| / max |map|`` per map (all-zero maps stay zero), as Quantus's ``abs`` + ``normalise_by_max``."""
    values = np.abs(maps.astype(np.float64))
    peak = values.reshape(len(values), -1).max(axis=1).reshape(-1, *[1] * (values.ndim - 1))
    return np.divide(values, peak, out=np.zeros_like(values), where=peak > 0)


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Spearman rank correlation of two ``N x ...`` stacks (average ranks on ties; NaN for a constant)."""
    from scipy.stats import rankdata

    ra = rankdata(a.reshape(len(a), -1), axis=1)
    rb = rankdata(b.reshape(len(b), -1), axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ra * rb).sum(1) / np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """skimage's ``structural_similarity(x, y, data_range=range of the pair)`` for every pair of two ``N x H x W``
    stacks (1.0 for a pair with no range at all; NaN for maps smaller than the 7 x 7 window)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    if min(a.shape[-2:]) < SSIM_WINDOW:
        return np.full(len(a), np.nan)
    # small maps many at a time (one call instead of one per pair); large ones in chunks that stay in cache
    chunk = max(1, CHUNK_PIXELS // (a.shape[-1] * a.shape[-2]))
    return np.concatenate([_ssim(a[i:i + chunk], b[i:i + chunk]) for i in range(0, len(a), chunk)])


def _ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    top = np.maximum(a.max(axis=(1, 2)), b.max(axis=(1, 2)))
    data_range = np.abs(top - np.minimum(a.min(axis=(1, 2)), b.min(axis=(1, 2))))[:, None, None]
    size = (1, SSIM_WINDOW, SSIM_WINDOW)  # no filtering across the stack; per image as skimage's 2-D filter
    ux, uy = uniform_filter(a, size=size), uniform_filter(b, size=size)
    uxx, uyy, uxy = uniform_filter(a * a, size=size), uniform_filter(b * b, size=size), uniform_filter(a * b, size=size)
    count = SSIM_WINDOW ** 2
    cov_norm = count / (count - 1)  # skimage's sample covariance
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    pad = (SSIM_WINDOW - 1) // 2
    values = s[:, pad:-pad, pad:-pad].mean(axis=(1, 2))
    return np.where(data_range[:, 0, 0] > 0, values, 1.0)


def hog(maps: np.ndarray) -> np.ndarray:
    """skimage's ``hog(map)`` with its defaults for every map of an ``N x H x W`` stack: ``N x features``."""
    maps = maps.astype(np.float64)
    count, height, width = maps.shape
    rows, cols = height // HOG_CELL, width // HOG_CELL
    if rows < HOG_BLOCK or cols < HOG_BLOCK:
        raise ValueError(f"HOG needs maps of at least {HOG_BLOCK * HOG_CELL} x {HOG_BLOCK * HOG_CELL} pixels")
    g_row, g_col = np.zeros_like(maps), np.zeros_like(maps)
    g_row[:, 1:-1] = maps[:, 2:] - maps[:, :-2]
    g_col[:, :, 1:-1] = maps[:, :, 2:] - maps[:, :, :-2]
    magnitude = np.hypot(g_col, g_row)
    orientation = np.rad2deg(np.arctan2(g_row, g_col)) % 180
    # bin i holds 20 i <= angle < 20 (i + 1), compared as skimage does (an angle that rounds to 180 is in none)
    edges = 180.0 / HOG_ORIENTATIONS * np.arange(1, HOG_ORIENTATIONS + 1)
    bins = np.searchsorted(edges, orientation[:, :rows * HOG_CELL, :cols * HOG_CELL], side="right")
    # one weighted bincount sums every cell's magnitudes per orientation (skimage loops over the cells)
    cell_row = np.arange(rows * HOG_CELL) // HOG_CELL
    cell_col = np.arange(cols * HOG_CELL) // HOG_CELL
    cell = (np.arange(count)[:, None, None] * rows + cell_row[None, :, None]) * cols + cell_col[None, None, :]
    index = cell * (HOG_ORIENTATIONS + 1) + bins  # a spare bin per cell for the angles in none
    cells = np.bincount(index.ravel(), weights=magnitude[:, :rows * HOG_CELL, :cols * HOG_CELL].ravel(),
                        minlength=count * rows * cols * (HOG_ORIENTATIONS + 1))
    cells = cells.reshape(count, rows, cols, HOG_ORIENTATIONS + 1)[..., :HOG_ORIENTATIONS] / (HOG_CELL * HOG_CELL)
    blocks = np.lib.stride_tricks.sliding_window_view(cells, (HOG_BLOCK, HOG_BLOCK), axis=(1, 2))
    blocks = blocks.transpose(0, 1, 2, 4, 5, 3)  # N x block rows x block cols x 3 x 3 x orientations, as skimage
    eps = 1e-5
    blocks = blocks / np.sqrt((blocks ** 2).sum(axis=(3, 4, 5), keepdims=True) + eps ** 2)  # L2-Hys
    blocks = np.minimum(blocks, 0.2)
    blocks = blocks / np.sqrt((blocks ** 2).sum(axis=(3, 4, 5), keepdims=True) + eps ** 2)
    return blocks.reshape(count, -1)


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of two ``N x D`` arrays (NaN where a row is constant)."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
    constant = (np.ptp(a, axis=1) == 0) | (np.ptp(b, axis=1) == 0)
    return np.where(constant, np.nan, values)


def hog_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The Pearson correlation of the HOG features of each pair of two ``N x H x W`` stacks."""
    return pearson(hog(a), hog(b))


def similarities(original: np.ndarray, randomised: np.ndarray) -> dict[str, np.ndarray]:
    """Each similarity of two ``N x H x W`` stacks, per pair, on ``|map| / max |map|``."""
    a, b = normalised(original), normalised(randomised)
    return {"spearman": spearman(a, b), "ssim": ssim(a, b), "hog": hog_pearson(a, b)}
