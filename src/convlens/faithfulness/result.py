"""The result of ``convlens.faithfulness``: the table, per-image scores, curves, maps and their figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from convlens.faithfulness.table import SCORES, score_names, table_csv
from convlens.output import output_dir
from convlens.result import Result


@dataclass(frozen=True)
class FaithfulnessResult(Result):
    """``table``: one row per method, ``{"method", "scores": {score: (mean, low, high)}, "note"}``;
    ``per_image``: ``{method: {score: values per image}}`` (``pointing``: per object); ``curves``:
    ``{"KIND.METHOD": array}`` (``deletion_curve``/``insertion_curve``: N x steps+1, ``road_morf``/``road_lerf``:
    N x percentiles, ``sanity_spearman_curve``/``sanity_ssim_curve``/``sanity_hog_curve``: checkpoints x N);
    ``maps``: ``{method: N x H x W}``."""

    command: ClassVar[str] = "faithfulness"

    methods: tuple[str, ...]
    metrics: tuple[str, ...]
    table: tuple[dict, ...]
    per_image: dict[str, dict[str, np.ndarray]]
    curves: dict[str, np.ndarray]
    maps: dict[str, torch.Tensor]
    not_applicable: dict[str, str]
    inputs: torch.Tensor
    classes: tuple[int, ...]
    trials: tuple[dict, ...] = ()
    sanity_layers: tuple[str, ...] = ()
    image_names: tuple[str, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)
    model_info: dict[str, Any] = field(default_factory=dict)
    class_names: tuple[str, ...] = ()
    display: np.ndarray | None = None
    compute_seconds: float = 0.0

    @property
    def scores(self) -> list[str]:
        return score_names(self.metrics)

    def score(self, method: str, score: str) -> float:
        """The table's mean of ``score`` for ``method`` (NaN where not applicable)."""
        row = next(r for r in self.table if r["method"] == method)
        return row["scores"].get(score, (float("nan"),))[0]

    def csv(self) -> str:
        return table_csv(self.table, self.scores)

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {"input": self.inputs.numpy(), "target": np.array(self.classes, dtype=np.int64)}
        for method, values in self.per_image.items():
            arrays.update({f"{score}.{method}": np.asarray(v) for score, v in values.items()})
        arrays.update({name: np.asarray(value) for name, value in self.curves.items()})
        arrays.update({f"map.{method}": maps.numpy() for method, maps in self.maps.items()})
        return arrays

    def summary(self) -> dict[str, Any]:
        described = {s[0]: s[2] for scores in SCORES.values() for s in scores}
        return {
            "command": self.command, "model": self.model_info, "methods": list(self.methods),
            "metrics": list(self.metrics), "scores": {s: described[s] for s in self.scores},
            "table": [{"method": row["method"], "note": row["note"],
                       **{s: dict(zip(("mean", "low", "high"), v, strict=True)) for s, v in row["scores"].items()}}
                      for row in self.table],
            "not_applicable": self.not_applicable,
            "images": [{"name": name, "target": {"index": c, "name": self._name(c)}}
                       for name, c in zip(self.image_names or [str(i) for i in range(len(self.classes))],
                                          self.classes, strict=True)],
            "objects": list(self.trials), "sanity_layers": list(self.sanity_layers),
            "parameters": self.parameters, "compute_seconds": self.compute_seconds,
        }

    def _name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else str(index)

    def figures(self) -> dict[str, Any]:
        from convlens.faithfulness.figures import curves_figure, maps_figure, ranking_figure

        figures = {"ranking": ranking_figure(self)}
        if any(key.split(".")[0] in ("deletion_curve", "insertion_curve", "road_morf", "sanity_spearman_curve")
               for key in self.curves):
            figures["curves"] = curves_figure(self)
        if self.maps:
            figures["maps"] = maps_figure(self)
        return figures

    def save(self, out: str | Path, *, force: bool = False) -> Path:
        """The standard folder (``arrays.npz``, ``summary.json``, the PNGs) plus ``table.csv``."""
        summary = dict(self.summary())
        seconds = float(summary.pop("compute_seconds", 0.0))
        with output_dir(out, self.command, force=force) as folder:
            folder.compute_seconds = seconds
            folder.add_arrays(**self.arrays())
            folder.file("table.csv").write_text(self.csv())
            for name, figure in self.iter_figures():
                folder.save_figure(figure, name)
            folder.update(**summary)
        return Path(out)
