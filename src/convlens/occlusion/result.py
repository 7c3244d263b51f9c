"""``OcclusionResult``: the maps over occluder positions, the per-pixel attribution, and how they were made."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from convlens.models.classifier import ImageClassifier
from convlens.result import Result

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class OcclusionResult(Result):
    """Maps over occluder positions (``rows x cols``, row-major) and the per-pixel ``attribution`` (``H x W``)."""

    command: ClassVar[str] = "occlusion"

    target_score: torch.Tensor  # rows x cols: the target's score with the occluder there (panel d)
    top_class: torch.Tensor  # rows x cols (int64): the most probable class (panel e)
    top_prob: torch.Tensor  # rows x cols: its probability
    feature_activation: torch.Tensor  # rows x cols: total activation of ``feature_channel`` at ``layer`` (panel b)
    attribution: torch.Tensor  # H x W: mean drop of the target score over the windows covering each pixel
    input: torch.Tensor  # 1 x 3 x H x W, the preprocessed clean input
    target: int | None  # the class explained; None for a callable target
    score: str  # "probability" or "logit" (what a class target reads)
    clean_score: float  # the target's score on the clean input
    clean_probabilities: torch.Tensor  # C: softmax on the clean input
    feature_channel: int
    clean_feature_activation: float
    layer: str
    window: int
    stride: int
    fill: str
    edges: str  # "whole" or "captum"
    batch_size: int
    engine: str  # "incremental" or "batched"
    engine_reason: str  # why the batched engine ran ("" for the incremental one)
    incremental_nodes: int  # graph nodes recomputed on regions only (0 for the batched engine)
    row_origins: np.ndarray  # top of each row of windows
    col_origins: np.ndarray
    projection: torch.Tensor | None  # 3 x H x W: panel (c), the feature map projected to pixels (None: skipped)
    rule: str | None  # the projection rule of panel (c)
    display: np.ndarray = field(repr=False)  # H x W x 3 in [0, 1]: the input as shown
    image: str = "tensor"  # the image's path, or "PIL image" / "tensor"
    class_names: tuple[str, ...] | None = field(default=None, repr=False)
    model: dict = field(default_factory=dict)  # what summary.json records about the model
    spec: str = "custom"
    compute_seconds: float = 0.0

    def class_name(self, index: int | None) -> str:
        if index is None:
            return "custom target"
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return f"class {index}"

    @property
    def clean_probability(self) -> float:
        """The clean probability of the target class (the clean score when ``score="probability"``)."""
        if self.target is None:
            raise ValueError("a callable target has no class probability; read clean_score")
        return float(self.clean_probabilities[self.target])

    @property
    def top_prediction(self) -> int:
        return int(self.clean_probabilities.argmax())

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {"input": self.input.numpy(), "target_score": self.target_score.numpy(),
                  "top_class": self.top_class.numpy(), "top_prob": self.top_prob.numpy(),
                  "feature_activation": self.feature_activation.numpy(), "attribution": self.attribution.numpy(),
                  "clean_probabilities": self.clean_probabilities.numpy(), "row_origins": self.row_origins,
                  "col_origins": self.col_origins}
        if self.projection is not None:
            arrays["deconv_projection"] = self.projection.numpy()
        return arrays

    def summary(self) -> dict[str, Any]:
        rows, cols = self.target_score.shape
        top = self.top_prediction
        return {
            "inputs": [self.image], "model": self.model, "layer": self.layer,
            "targets": [{"index": self.target, "name": self.class_name(self.target)}], "score": self.score,
            "parameters": {"window": self.window, "stride": self.stride, "fill": self.fill, "edges": self.edges,
                           "batch_size": self.batch_size, "rows": int(rows), "cols": int(cols)},
            "engine": self.engine, "engine_reason": self.engine_reason, "incremental_nodes": self.incremental_nodes,
            "feature_channel": self.feature_channel, "clean_feature_activation": self.clean_feature_activation,
            "clean_score": self.clean_score, "min_score": float(self.target_score.min()),
            "top_prediction": {"index": top, "name": self.class_name(top)},
            "top_classes": {str(i): self.class_name(i) for i in sorted(set(self.top_class.flatten().tolist()))},
            "projection_rule": self.rule, "compute_seconds": self.compute_seconds,
        }

    def figures(self) -> dict[str, Figure]:
        from convlens.occlusion.figures import attribution_figure, occlusion_figure

        title = f"{self.spec}: occlusion of {Path(self.image).name}"
        return {"occlusion": occlusion_figure(self, title=title), "attribution": attribution_figure(self, title=title)}


def display_image(model, inputs: torch.Tensor) -> np.ndarray:
    """``1 x 3 x H x W`` model input as an ``H x W x 3`` image in [0, 1]."""
    if isinstance(model, ImageClassifier):
        return np.asarray(model.preprocessing.to_display(inputs[0].detach().cpu()))
    from convlens.render import min_max

    return min_max(inputs[0].detach().cpu().permute(1, 2, 0).float().numpy())
