"""The result of a job on Ray: the method's own result, with how the job ran added to its summary.

Where the per-image results do not fit in one ``arrays.npz`` (folder CAM: a map per image), the method's result
covers the first ``PREVIEW`` readable images (identical to what the in-process command writes for them; all of
them when the folder is that small) and ``OUT/shards/*.parquet`` holds every image (``read_shards``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convlens.result import Result

PREVIEW = 64


def column_arrays(table, names: list[str]) -> dict[str, np.ndarray]:
    """Columns of a shard table (readable rows only) as stacked numpy arrays; a flattened array column is
    reshaped by its ``NAME.shape`` column."""
    arrays = {}
    for name in names:
        column = table.column(name).combine_chunks()
        if f"{name}.shape" in table.column_names:
            shape = tuple(table.column(f"{name}.shape")[0].as_py()) if len(table) else (0,)
            flat = column.flatten().to_numpy(zero_copy_only=False)
            arrays[name] = np.array(flat).reshape(len(table), *shape)  # a writable copy (torch wants one)
        else:
            arrays[name] = np.array(column.to_numpy(zero_copy_only=False))
    return arrays


@dataclass(frozen=True)
class OnRay(Result):
    """A method's own result (``TopKResult``...) computed on Ray: its arrays and figures unchanged, its summary
    with how the job ran (``ray``), the images that could not be read (``unreadable``) and the total time."""

    inner: Result
    ray: dict[str, Any]
    unreadable: list[dict[str, str]]
    compute_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)  # the job's own totals (images explained, accuracy)

    def __getattr__(self, name: str):  # the inner result's fields (``values``, ``images``...) read through
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def command(self) -> str:  # type: ignore[override]
        return self.inner.command

    def arrays(self) -> dict[str, np.ndarray]:
        return self.inner.arrays()

    def summary(self) -> dict[str, Any]:
        return {**self.inner.summary(), **self.extra, "ray": self.ray, "unreadable": self.unreadable,
                "compute_seconds": self.compute_seconds}

    def figures(self) -> dict:
        return self.inner.figures()

    def iter_figures(self) -> Iterator[tuple[str, Any]]:
        return self.inner.iter_figures()

    def save(self, out, *, force: bool = False):
        """The standard folder (``Result.save``), plus ``table.csv`` where the inner result has a table
        (faithfulness), as its own ``save`` writes it."""
        from pathlib import Path

        from convlens.output import output_dir

        if not callable(getattr(self.inner, "csv", None)):
            return super().save(out, force=force)
        summary = dict(self.summary())
        seconds = float(summary.pop("compute_seconds", 0.0))
        with output_dir(out, self.command, force=force) as folder:
            folder.compute_seconds = seconds
            folder.update(**summary)
            folder.add_arrays(**self.arrays())
            folder.file("table.csv").write_text(self.inner.csv())
            for name, figure in self.iter_figures():
                folder.save_figure(figure, name)
        return Path(out)
