"""The perturbation base's worked example: RISE (Petsiuk et al. 2018) as a mask generator and a reducer.

RISE draws N binary grids of ``cells x cells`` cells, each cell on with probability p, upsamples each bilinearly
to ``(cells + 1) x`` the cell size, crops it at a random shift, and weights every mask by the model's score on the
masked image: ``saliency = sum_i score_i * mask_i / (N * p)``. With ``convlens.perturbation`` that is a generator
of masks and ``MaskWeightedSum``; here it is checked against a plain one-mask-at-a-time loop.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convlens.errors import ConvlensError
from convlens.perturbation import MaskWeightedSum, ScoreList, perturb


def rise_masks(count: int, cells: int, p: float, height: int, width: int, seed: int = 0, chunk: int = 16):
    """RISE's masks, ``chunk`` at a time (``K x 1 x H x W`` in [0, 1]): the whole method-specific part."""
    generator = torch.Generator().manual_seed(seed)
    cell_h, cell_w = math.ceil(height / cells), math.ceil(width / cells)
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        grids = (torch.rand(n, 1, cells, cells, generator=generator) < p).float()
        upsampled = F.interpolate(grids, size=((cells + 1) * cell_h, (cells + 1) * cell_w), mode="bilinear",
                                  align_corners=False)
        dy = torch.randint(0, cell_h, (n,), generator=generator).tolist()
        dx = torch.randint(0, cell_w, (n,), generator=generator).tolist()
        yield torch.stack([upsampled[k, :, y:y + height, x:x + width]
                           for k, (y, x) in enumerate(zip(dy, dx, strict=True))])


def rise(model, image, count=200, cells=4, p=0.5, **options) -> torch.Tensor:
    height, width = image.shape[-2:]
    run = perturb(model, image, rise_masks(count, cells, p, height, width), MaskWeightedSum(), total=count,
                  **options)
    return run.value[0] / (count * p)


class TopLeft(nn.Module):
    """Class 0's logit grows with the top-left quadrant of the image, class 1's with the rest of it."""

    def forward(self, x):
        top_left = x[:, :, :16, :16].mean(dim=(1, 2, 3))
        return torch.stack([4 * top_left, 4 * (x.mean(dim=(1, 2, 3)) - top_left / 4)], dim=1)


@pytest.fixture(scope="module")
def small_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 4)).eval()
    with torch.no_grad():
        net[-1].weight.mul_(20)
    return net


def test_rise_matches_a_plain_loop(small_net):
    torch.manual_seed(1)
    image = torch.randn(1, 3, 32, 32)
    events = []
    saliency = rise(small_net, image, count=100, cells=4, p=0.4, target=2, batch_size=10,
                    progress=lambda *event: events.append(event))
    expected = torch.zeros(32, 32, dtype=torch.float64)
    with torch.inference_mode():
        for masks in rise_masks(100, 4, 0.4, 32, 32):
            for mask in masks:
                score = torch.softmax(small_net(image * mask), dim=1)[0, 2]
                expected += float(score) * mask[0].double()
    expected /= 100 * 0.4
    torch.testing.assert_close(saliency, expected, atol=1e-5, rtol=0)
    assert float(expected.std()) > 1e-3  # the masks make a difference
    assert events[-1] == ("perturbation", 10, 10)  # ten batches of ten regrouped from chunks of 16


def test_rise_masks_follow_the_paper():
    masks = torch.cat(list(rise_masks(400, 4, 0.3, 32, 32, seed=3)))
    assert masks.shape == (400, 1, 32, 32) and float(masks.min()) >= 0 and float(masks.max()) <= 1 + 1e-6
    # Bilinear interpolation of Bernoulli(p) cells has expectation p everywhere.
    assert float(masks.mean()) == pytest.approx(0.3, abs=0.03)
    assert float((masks > 0.99).float().mean()) > 0.02 and float((masks < 0.01).float().mean()) > 0.2


def test_rise_finds_the_region_the_class_reads():
    image = torch.ones(1, 3, 32, 32)
    saliency = rise(TopLeft(), image, count=300, cells=4, p=0.5, target=0, score="logit")
    inside, outside = float(saliency[:14, :14].mean()), float(saliency[18:, 18:].mean())
    assert inside > outside + 0.1


def test_score_list_keeps_mask_order_and_baseline_tensor(small_net):
    torch.manual_seed(2)
    image = torch.randn(1, 3, 32, 32)
    baseline = torch.full_like(image, 0.25)
    masks = [torch.ones(32, 32), torch.zeros(32, 32), torch.ones(1, 32, 32) * 0.5]
    run = perturb(small_net, image, iter(masks), ScoreList(), target=1, score="logit", baseline=baseline)
    with torch.inference_mode():
        expected = torch.stack([small_net(x)[0, 1] for x in (image, baseline, (image + baseline) / 2)])
    torch.testing.assert_close(run.value, expected.double(), atol=1e-5, rtol=0)
    assert run.clean_score == pytest.approx(float(expected[0]), abs=1e-5) and run.evaluations == 3
    with pytest.raises(ConvlensError, match="one image"):
        perturb(small_net, torch.randn(2, 3, 32, 32), iter(masks), ScoreList())
    with pytest.raises(ConvlensError, match="mask must be"):
        perturb(small_net, image, iter([torch.ones(32)]), ScoreList())
