"""CAM methods against pytorch-grad-cam and torchcam on the same model, layer, target and input (1e-4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from cam_helpers import make_resnet, make_vgg, peer_raw
from torch import nn

from convlens.cam import (
    CAM,
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
    min_max_per_image,
)
from convlens.cam.methods import distinct_maps
from convlens.errors import ConvlensError

pg = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


@pytest.fixture(scope="module")
def resnet():
    return make_resnet()


@pytest.fixture(scope="module")
def vgg():
    return make_vgg()

PEERS = {
    GradCAM: pg.GradCAM,
    GradCAMPlusPlus: pg.GradCAMPlusPlus,
    XGradCAM: pg.XGradCAM,
    LayerCAM: pg.LayerCAM,
    ScoreCAM: pg.ScoreCAM,
    EigenCAM: pg.EigenCAM,
    AblationCAM: pg.AblationCAM,
}
# One forward pass per channel: on a layer with 128 channels and smaller inputs (vgg16: one image), to stay fast.
EXPENSIVE = {ScoreCAM: {"resnet": ("layer2", 2, 64), "vgg": ("features.8", 1, 48)},
             AblationCAM: {"resnet": ("layer2", 2, 64), "vgg": ("features.8", 1, 48)}}


@pytest.mark.parametrize("model_name", ["resnet", "vgg"])
@pytest.mark.parametrize("method", list(PEERS), ids=lambda m: m.name)
def test_cam_raw_matches_pytorch_grad_cam(model_name, method, request):
    model, layer, inputs, targets = request.getfixturevalue(model_name)
    if method in EXPENSIVE:
        layer, count, size = EXPENSIVE[method][model_name]
        inputs, targets = inputs[:count, :, :size, :size].contiguous(), targets[:count]
    # batch_size 48 does not divide the 128 channels: Score/Ablation batches straddle two images.
    result = method(model, layer, batch_size=48)(inputs, targets)
    raw = result.cam_raw
    assert raw.shape[0] == len(inputs) and raw.min() >= 0
    expected = peer_raw(PEERS[method], model, layer, inputs, targets, raw.shape[-2:])
    np.testing.assert_allclose(min_max_per_image(raw).numpy(), expected, atol=1e-4)
    assert result.targets == tuple(targets)


def test_cam_matches_torchcam(resnet):
    torchcam = pytest.importorskip("torchcam.methods")
    model, _, inputs, targets = resnet
    extractor = CAM(model, input_size=(112, 112))
    assert (extractor.layers, extractor.classifier_name) == (["layer4"], "fc")
    result = extractor(inputs, targets)
    with torchcam.CAM(model, "layer4", "fc") as peer, torch.inference_mode():
        model(inputs)
        expected = peer(targets)[0]
    assert result.cam_raw.min() < 0  # CAM has no ReLU (Zhou et al., torchcam)
    np.testing.assert_allclose(min_max_per_image(result.cam_raw).numpy(), expected.numpy(), atol=1e-4)
    # The raw CAM is the classifier rows applied to the pooled layer: check one pixel by hand.
    with torch.inference_mode():
        features = nn.Sequential(*list(model.children())[:-2])(inputs)
        by_hand = (model.fc.weight[targets[0]] * features[0, :, 2, 1]).sum()
    assert torch.isclose(result.cam_raw[0, 2, 1], by_hand, atol=1e-4)


def test_cam_finds_the_pooled_layer_and_explains_misfits(resnet):
    model, *_ = resnet
    assert CAM(model, "layer4.1", input_size=(112, 112)).layers == ["layer4.1"]
    with pytest.raises(ConvlensError, match="global average pooling reads.*layer4"):
        CAM(model, "layer3", input_size=(112, 112))
    with pytest.raises(ConvlensError, match="not the average of any layer"):
        CAM(torchvision.models.vgg11(num_classes=4), input_size=(64, 64))
    with pytest.raises(ConvlensError, match="1x1 at 32x32 input"):
        CAM(model, input_size=(32, 32))
    from convlens.models import BaselineCNN

    with pytest.raises(ConvlensError, match="not the average of any layer"):
        CAM(BaselineCNN(3, 32), input_size=(32, 32))
    with pytest.raises(ConvlensError, match="class logits"):
        CAM(model, input_size=(112, 112))(torch.zeros(1, 3, 112, 112), lambda out: out[:, 0].exp())


def test_final_maps_match_pytorch_grad_cam_at_input_size(resnet):
    """``maps`` (upsampled, 0..1) against pytorch-grad-cam's own output, also fusing two layers."""
    model, layer, inputs, targets = resnet
    for layers in ([layer], ["layer2", "layer3"]):
        result = GradCAM(model, layers)(inputs, targets)
        peer = pg.GradCAM(model, [model.get_submodule(name) for name in layers])
        with peer:
            expected = peer(inputs, [ClassifierOutputTarget(t) for t in targets])
        assert result.maps.shape == (2, 112, 112)
        np.testing.assert_allclose(result.maps.numpy(), expected, atol=1e-4)
    assert len(result.raw) == 2 and result.raw[0].shape[-1] == 14
    with pytest.raises(ConvlensError, match="use .raw"):
        _ = result.cam_raw


def test_eigencam_sign_follows_the_activations(resnet):
    """The principal component's sign is arbitrary: ours correlates positively with the channel-summed
    activations; the projection itself is pytorch-grad-cam's."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    model, layer, inputs, _ = resnet
    activations = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: activations.setdefault("a", o))
    with torch.inference_mode():
        model(inputs)
    handle.remove()
    acts = activations["a"].numpy()
    projection = get_2d_projection(acts)
    total = acts.sum(1)
    signs = np.sign(((projection - projection.mean((1, 2), keepdims=True)) * total).sum((1, 2)))
    expected = min_max_per_image(torch.from_numpy(np.maximum(signs[:, None, None] * projection, 0))).numpy()
    result = EigenCAM(model, layer)(inputs)
    np.testing.assert_allclose(min_max_per_image(result.cam_raw).numpy(), expected, atol=1e-4)


def test_scorecam_shares_one_pass_between_equal_masks():
    activations = torch.zeros(6, 3, 3)
    activations[1, 0, 0] = 2.0  # one-hot at (0, 0) ...
    activations[2, 0, 0] = 5.0  # ... the same mask once scaled
    activations[3] = torch.arange(9.0).view(3, 3)
    activations[4] = 3 * torch.arange(9.0).view(3, 3) + 1  # affine copy of channel 3
    activations[5] = 7.0  # constant: the zero mask, like channel 0
    groups, first = distinct_maps(activations)
    assert first.tolist() == [0, 1, 3]
    assert groups.tolist() == [0, 1, 1, 2, 2, 0]


def test_scorecam_with_all_zero_channels_matches_peer():
    """A ReLU layer with dead channels (as trained models have): shared passes give the peer's numbers."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 24, 3, stride=2, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 5)).eval()
    with torch.no_grad():
        model[2].bias[:12] = -100.0  # half the channels of layer 3 are dead
    inputs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    rows = []
    counter = model[0].register_forward_pre_hook(lambda module, args: rows.append(len(args[0])))
    try:
        result = ScoreCAM(model, "3", batch_size=5)(inputs, [1, 4])
    finally:
        counter.remove()
    # the first pass (2 images), then per image one zero mask for the 12 dead channels + 12 live ones
    assert sum(rows) == 2 + 2 * (1 + 12)
    expected = peer_raw(pg.ScoreCAM, model, "3", inputs, [1, 4], (8, 8))
    np.testing.assert_allclose(min_max_per_image(result.cam_raw).numpy(), expected, atol=1e-4)

