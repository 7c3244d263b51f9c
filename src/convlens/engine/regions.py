"""Input variants that differ from one clean input in known rectangles, and the index arithmetic on them.

A variant is named by a pair ``(i, j)``: the clean input with rows ``row_lo[i] .. row_hi[i]`` and columns
``col_lo[j] .. col_hi[j]`` (inclusive) taken from ``fill``. The geometry is separable (rows depend only on
``i``, columns only on ``j``), which is what lets the regional engine plan each axis once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Regions:
    """Rectangles of the input to replace, one per ``(row index, column index)`` pair, and what fills them."""

    row_lo: np.ndarray  # first row of the rectangle, per row index
    row_hi: np.ndarray  # last row (inclusive)
    col_lo: np.ndarray
    col_hi: np.ndarray
    fill: torch.Tensor  # 1 x C x H x W: the values a variant shows inside its rectangle

    @classmethod
    def windows(cls, row_origins: Sequence[int], col_origins: Sequence[int], size: int, fill: torch.Tensor,
                height: int | None = None, width: int | None = None) -> Regions:
        """Square windows of side ``size`` at the given origins, cropped at the input's border."""
        height = fill.shape[-2] if height is None else height
        width = fill.shape[-1] if width is None else width
        rows, cols = np.asarray(row_origins, dtype=np.int64), np.asarray(col_origins, dtype=np.int64)
        return cls(rows, np.minimum(rows + size, height) - 1, cols, np.minimum(cols + size, width) - 1, fill)

    @property
    def shape(self) -> tuple[int, int]:
        """How many row and column indices there are (variants: their product)."""
        return len(self.row_lo), len(self.col_lo)

    def grid(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Row and column index of every variant, row-major (``len = rows * cols``)."""
        rows, cols = self.shape
        return (torch.arange(rows, device=device).repeat_interleave(cols),
                torch.arange(cols, device=device).repeat(rows))

    def masks(self, row_index: torch.Tensor, col_index: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``B x 1 x H x W`` booleans: where each variant differs from the clean input."""
        device = row_index.device
        rows = inside(torch.arange(height, device=device), torch.as_tensor(self.row_lo, device=device)[row_index],
                      torch.as_tensor(self.row_hi, device=device)[row_index])
        cols = inside(torch.arange(width, device=device), torch.as_tensor(self.col_lo, device=device)[col_index],
                      torch.as_tensor(self.col_hi, device=device)[col_index])
        return rows[:, None, :, None] & cols[:, None, None, :]

    def variants(self, inputs: torch.Tensor, row_index: torch.Tensor, col_index: torch.Tensor) -> torch.Tensor:
        """The full variant inputs (``B x C x H x W``) for the given index pairs."""
        mask = self.masks(row_index, col_index, *inputs.shape[-2:])
        return torch.where(mask, self.fill.to(inputs.device), inputs)

    def coverage(self, values: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per pixel, the sum of ``values`` (``rows x cols``, one per variant) over the variants whose rectangle
        covers it, and how many there are (both ``H x W``, float64): separable, two matrix products."""
        row_cover = inside(torch.arange(height), torch.as_tensor(self.row_lo), torch.as_tensor(self.row_hi)).double()
        col_cover = inside(torch.arange(width), torch.as_tensor(self.col_lo), torch.as_tensor(self.col_hi)).double()
        total = row_cover.T @ values.double() @ col_cover
        count = row_cover.T @ torch.ones_like(values, dtype=torch.float64) @ col_cover
        return total, count


def inside(coordinates: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``B x len(coordinates)``: whether each coordinate lies in ``[lo[b], hi[b]]``."""
    return (coordinates[None, :] >= lo[:, None]) & (coordinates[None, :] <= hi[:, None])


def hull(intervals: Sequence[tuple]) -> tuple[np.ndarray, ...]:
    """Per index, the smallest interval holding every non-empty given interval, per axis."""
    result = []
    for axis in (0, 2):
        los = np.stack([np.asarray(i[axis]) for i in intervals])
        his = np.stack([np.asarray(i[axis + 1]) for i in intervals])
        empty = los > his
        lo = np.where(empty, np.iinfo(np.int64).max, los).min(0)
        hi = np.where(empty, np.iinfo(np.int64).min, his).max(0)
        nothing = empty.all(0)  # no change at all for this index: an empty interval
        result += [np.where(nothing, 0, lo), np.where(nothing, -1, hi)]
    return tuple(result)


def fit(lo: np.ndarray, hi: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """A fixed length holding ``[lo, hi] ∩ [0, size)`` for every index, and each index's origin inside the map."""
    lo, hi = np.clip(lo, 0, size - 1), np.clip(hi, 0, size - 1)
    length = int(max(1, (hi - lo + 1).max()))
    return np.clip(lo, 0, size - length), length


def gather(source: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``out[b] = source[b or 0][:, rows[b]][:, :, cols[b]]``: a region per sample, at per-sample offsets.

    The result is channels-last (fastest when ``source`` is too), as the regional computations keep it.
    """
    batch = torch.arange(rows.shape[0], device=source.device) if source.shape[0] > 1 else \
        torch.zeros(rows.shape[0], dtype=torch.long, device=source.device)
    region = source.permute(0, 2, 3, 1)[batch[:, None, None], rows[:, :, None], cols[:, None, :]]
    return region.permute(0, 3, 1, 2)


def scatter(target: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> None:
    """``target[b][:, rows[b]][:, :, cols[b]] = values[b]`` in place, at per-sample offsets."""
    batch = torch.arange(rows.shape[0], device=target.device)[:, None, None]
    target.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]] = values.permute(0, 2, 3, 1)
