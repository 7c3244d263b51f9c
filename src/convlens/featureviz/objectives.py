"""What a visualization maximises, for a batch where element ``i`` serves unit ``units[i]``.

Each objective maps the hooked layer's output (``N x C x h x w``; for ``class`` the model's logits ``N x K``) to
``N`` values, one per image; the optimizer maximises their sum, which optimises every image independently
(Adam's update is element-wise). ``diversity`` is a penalty on images of the same unit that are alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from convlens.errors import ConvlensError

OBJECTIVES = ("channel", "neuron", "direction", "class")


@dataclass(frozen=True)
class Objective:
    """``kind``: channel (mean over positions), neuron (one position, default the centre), direction (mean over
    positions of the dot product with ``vectors[i]`` in channel space), class (a logit)."""

    kind: str
    units: torch.Tensor  # N unit (channel or class) indices, one per batch element
    position: tuple[int, int] | None = None  # neuron: (row, col) at the layer's resolution
    vectors: torch.Tensor | None = None  # direction: N x C

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise ConvlensError(f"objective {self.kind!r}: choose one of {', '.join(OBJECTIVES)}")
        if self.kind == "direction" and self.vectors is None:
            raise ConvlensError("the direction objective needs a vector in channel space")

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(output.shape[0], device=output.device)
        if self.kind == "class":
            if output.ndim != 2:
                raise ConvlensError("the class objective needs a model whose output is N x classes logits")
            return output[rows, self.units.to(output.device)]
        if output.ndim != 4:
            raise ConvlensError(f"the {self.kind} objective needs an N x C x H x W layer output, got "
                                f"{tuple(output.shape)}; choose a conv layer or block")
        if self.kind == "direction":
            vectors = self.vectors.to(output.device, output.dtype)
            return torch.einsum("nchw,nc->nhw", output, vectors).mean(dim=(1, 2))
        maps = output[rows, self.units.to(output.device)]
        if self.kind == "channel":
            return maps.mean(dim=(1, 2))
        row, col = self.position if self.position is not None else (maps.shape[1] // 2, maps.shape[2] // 2)
        if not (0 <= row < maps.shape[1] and 0 <= col < maps.shape[2]):
            raise ConvlensError(f"neuron position {(row, col)} is outside the layer's {maps.shape[1]}x"
                                f"{maps.shape[2]} map")
        return maps[:, row, col]

    def statistic(self, output: torch.Tensor) -> torch.Tensor:
        """The same value for every unit on every image: ``M images x N units`` (for natural references)."""
        if self.kind == "class":
            return output[:, self.units.to(output.device)]
        if self.kind == "direction":
            return torch.einsum("mchw,nc->mnhw", output, self.vectors.to(output.device, output.dtype)).mean(
                dim=(2, 3))
        maps = output[:, self.units.to(output.device)]
        if self.kind == "channel":
            return maps.mean(dim=(2, 3))
        row, col = self.position if self.position is not None else (maps.shape[2] // 2, maps.shape[3] // 2)
        return maps[:, :, row, col]


def diversity_penalty(output: torch.Tensor, groups: int, per_group: int) -> torch.Tensor:
    """Lucid's diversity term per image: the summed cosine similarity of its layer Gram matrix with those of
    the other images of its unit, divided by the group size (``N`` values; 0 when ``per_group`` is 1)."""
    if per_group < 2:
        return output.new_zeros(output.shape[0])
    flat = output.flatten(2)  # N x C x hw
    grams = F.normalize(torch.bmm(flat, flat.transpose(1, 2)).flatten(1), dim=1, eps=1e-10)
    grams = grams.view(groups, per_group, -1)
    similarity = torch.bmm(grams, grams.transpose(1, 2))  # groups x k x k
    others = similarity.sum(dim=2) - similarity.diagonal(dim1=1, dim2=2)
    return (others / per_group).flatten()
