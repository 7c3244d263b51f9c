"""Model hygiene: after any CAM call the model is exactly as before (also after an error); in-place ReLUs do not
change the numbers."""

from __future__ import annotations

import pytest
import torch
from cam_helpers import Branchy, assert_same, make_branchy, snapshot

from convlens.cam import CAM, METHODS, AblationCAM, GradCAM, ScoreCAM
from convlens.errors import ConvlensError


@pytest.fixture
def branchy():
    return make_branchy()


@pytest.mark.parametrize("method", list(METHODS.values()), ids=lambda m: m.name)
def test_model_is_exactly_as_before_also_after_an_error(method, branchy):
    inputs = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(6))
    before = snapshot(branchy)
    layer = "conv" if method is not CAM else None
    result = method(branchy, layer, batch_size=5, input_size=(12, 12))(inputs, [0, 1, 2])
    assert torch.isfinite(result.maps).all()
    assert_same(before, branchy)

    def boom(output):
        raise RuntimeError("target failed")

    with pytest.raises((RuntimeError, ConvlensError)):
        method(branchy, layer, input_size=(12, 12))(inputs, boom)
    assert_same(before, branchy)


@pytest.mark.parametrize("method", [ScoreCAM, AblationCAM], ids=lambda m: m.name)
def test_model_restored_when_a_masked_pass_fails(method, branchy):
    """The target works on the first pass and fails during the per-channel passes (hooks are in place then)."""
    inputs = torch.randn(1, 3, 12, 12)
    calls = []

    def flaky(output):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("failed mid-way")
        return output[:, 0]

    before = snapshot(branchy)
    with pytest.raises(RuntimeError, match="mid-way"):
        method(branchy, "conv", batch_size=4)(inputs, flaky)
    assert_same(before, branchy)


def test_inplace_relu_does_not_change_gradients(branchy):
    """Grad-CAM on the model with in-place ReLUs equals Grad-CAM computed by hand on its out-of-place twin."""
    inputs = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(7))
    twin = Branchy(inplace=False)
    twin.load_state_dict(branchy.state_dict())
    twin.eval()
    for layer in ("conv", "conv2"):
        result = GradCAM(branchy, layer)(inputs, [2, 3])
        features = twin.conv(twin.stem(inputs))
        if layer == "conv2":
            features = twin.conv2(features.relu())
        features = features.detach().requires_grad_()
        rest = twin.act(twin.conv2(features.relu())) if layer == "conv" else twin.act(features)
        logits = twin.head(rest.mean(dim=(2, 3)))
        (gradients,) = torch.autograd.grad(logits[0, 2] + logits[1, 3], features)
        by_hand = torch.relu((gradients.mean(dim=(2, 3), keepdim=True) * features).sum(1)).detach()
        torch.testing.assert_close(result.cam_raw, by_hand, atol=1e-5, rtol=1e-4)
    assert branchy.head.weight.grad.eq(0.5).all()  # .grad untouched

