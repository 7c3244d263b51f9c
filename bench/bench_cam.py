"""CAM timings: Grad-CAM against the floor (a bare forward + backward of the same batch), Score-CAM against
pytorch-grad-cam's ScoreCAM at equal output.

- Grad-CAM: target <= 1.15x the floor. convlens freezes the parameters for the call and starts the graph at
  the hooked layer, so its backward pass is the part after that layer only (the floor computes every
  parameter's gradient).
- Score-CAM on the default model (real ImageNet weights) at the layer global average pooling reads (bn2, after
  ReLU6), on a real photo: target <= 0.5x pytorch-grad-cam. Most of the gain is that channels whose masks are
  equal once scaled (all the all-zero channels a trained network has after its activation, ~half here) share
  one forward pass; the rest is larger batches across images.
- Score-CAM on a random-init resnet18 (dense layer, nothing to share): no target, shown for honesty.
- The family against its peers at equal output (final maps at input size, 0..1, equal to 1e-3): pytorch-grad-cam
  GradCAM, GradCAMPlusPlus, EigenCAM, AblationCAM; torchcam CAM and ScoreCAM. No targets were set for these.
  torchcam's ScoreCAM masks the input with the raw activations, not the min-max normalised ones of the paper
  (and of pytorch-grad-cam and convlens): the same work, one forward pass per channel, but maps that differ by
  a few percent, so that case checks a correlation > 0.99 instead of equality.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
import torchvision

import convlens
from bench.harness import DEVICE, BenchCase
from bench.inputs import PHOTO, baseline_on_leaf, random_torchvision, skimage_coffee
from convlens.cam import CAM, AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM
from convlens.cam.base import min_max_per_image


def _gradcam_case(quick: bool) -> BenchCase:
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval().to(DEVICE)
    batch = 4 if quick else 16
    inputs = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    targets = [int(t) for t in torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(2))]
    index = torch.tensor(targets, device=DEVICE)[:, None]

    def floor() -> None:
        model.zero_grad(set_to_none=True)
        model(inputs).gather(1, index).sum().backward()
        model.zero_grad(set_to_none=True)

    def ours():  # the public function, as users call it
        return convlens.cam(model, inputs, method="gradcam", layer="layer4", target=targets, batch_size=batch)

    return BenchCase(f"gradcam resnet50 224 b{batch}", ours, floor,
                     "floor: forward+backward", max_ratio=1.15, repetitions=None if quick else 3,
                     note="random-init resnet50, layer4; floor = model(x) + target-logit backward()")


def _default_model_photo(size: int):
    model = convlens.load_model(device=str(DEVICE))
    preprocessing = dataclasses.replace(model.preprocessing, crop=(size, size), resize=round(size * 256 / 224))
    image = convlens.load_image(PHOTO) if PHOTO.is_file() else skimage_coffee()
    return model, preprocessing.batch([image]).to(DEVICE)


def _peer_scorecam(module, layer, inputs, targets):
    from pytorch_grad_cam import ScoreCAM as PeerScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = copy.deepcopy(module)  # the peer's hooks stay on its own copy
    peer = PeerScoreCAM(module, [module.get_submodule(layer)])
    wanted = [ClassifierOutputTarget(t) for t in targets]

    def run():
        return peer(inputs, wanted)

    return run


def _same_maps(ours, theirs) -> None:
    difference = float(np.abs(ours.maps.numpy() - theirs).max())
    if difference > 1e-3:
        raise AssertionError(f"Score-CAM maps differ from pytorch-grad-cam's by {difference:.2e}")


def _scorecam_default_case(quick: bool) -> BenchCase:
    size = 112 if quick else 224
    model, inputs = _default_model_photo(size)
    layer = "bn2"
    with torch.inference_mode():
        targets = model.module(inputs).argmax(1).tolist()
    extractor = ScoreCAM(model, layer, batch_size=32)
    return BenchCase(f"scorecam efficientnet_lite0 {size} bn2 1 photo", lambda: extractor(inputs, targets),
                     _peer_scorecam(model.module, layer, inputs, targets), "pytorch-grad-cam ScoreCAM",
                     check=_same_maps, max_ratio=0.5, repetitions=None if quick else 1,
                     note="real ImageNet weights; 1280 channels, equal masks share one pass")


def _scorecam_dense_case(quick: bool) -> BenchCase:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval().to(DEVICE)
    size, layer, images = (64, "layer3", 1) if quick else (112, "layer4", 2)
    inputs = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    targets = list(range(images))
    extractor = ScoreCAM(model, layer, batch_size=32)
    return BenchCase(f"scorecam resnet18 {size} {layer} {images} img", lambda: extractor(inputs, targets),
                     _peer_scorecam(model, layer, inputs, targets), "pytorch-grad-cam ScoreCAM",
                     check=_same_maps, max_ratio=0.6,
                     note="random init: dense layer, almost no masks to share; batch norms folded into the "
                          "convolutions for the masked passes")


PG_PEERS = {GradCAM: "GradCAM", GradCAMPlusPlus: "GradCAMPlusPlus", EigenCAM: "EigenCAM",
            AblationCAM: "AblationCAM", ScoreCAM: "ScoreCAM"}


def _random_model(name: str, size: int, batch: int):
    model, inputs = random_torchvision(name, size, batch, input_seed=4)
    targets = [int(t) for t in torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(5))]
    return model, inputs, targets


def _leaf_batch(batch: int):
    model, inputs = baseline_on_leaf(batch)
    return model, inputs, [0, 1, 2] * (batch // 3) + [0] * (batch % 3)


def _equal_maps(ours, theirs) -> None:
    difference = float(np.abs(ours.maps.numpy() - theirs).max())
    if difference > 1e-3:
        raise AssertionError(f"maps differ from the peer's by {difference:.2e}")


def _pg_case(method, label: str, model, inputs, targets, layer: str, note: str) -> BenchCase:
    """convlens ``method`` against pytorch-grad-cam's class of the same name, final maps at input size."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    extractor = method(model, layer, batch_size=32)
    # pytorch-grad-cam hooks the model as long as the object lives: it gets its own copy, so that its hooks do
    # not run (and cost) during convlens's calls
    model = copy.deepcopy(model)
    peer = getattr(pytorch_grad_cam, PG_PEERS[method])(model, [model.get_submodule(layer)])
    if hasattr(peer, "batch_size"):
        peer.batch_size = 32
    wanted = [ClassifierOutputTarget(t) for t in targets]
    return BenchCase(f"{method.name} {label} {layer} b{len(inputs)}", lambda: extractor(inputs, targets),
                     lambda: peer(inputs, wanted), f"pytorch-grad-cam {PG_PEERS[method]}", check=_equal_maps,
                     note=note)


def _torchcam_case(method, label: str, model, inputs, targets, layer: str, note: str) -> BenchCase:
    """convlens CAM or ScoreCAM against torchcam's: one hooked forward pass, then the maps."""
    import torchcam.methods

    if method is CAM:
        extractor = CAM(model, layer, input_size=tuple(inputs.shape[-2:]))
    else:
        extractor = method(model, layer, batch_size=32)
    model = copy.deepcopy(model)  # torchcam hooks the model as long as the object lives: its own copy
    if method is CAM:
        peer = torchcam.methods.CAM(model, layer, "fc")
    else:
        peer = torchcam.methods.ScoreCAM(model, layer, batch_size=32)

    def theirs():
        with torch.inference_mode():
            model(inputs)
        return peer(targets)[0]

    def check(ours, maps):
        ours_raw, maps = min_max_per_image(ours.cam_raw), maps.cpu()
        if method is CAM:
            difference = float((ours_raw - maps).abs().max())
            if difference > 1e-3:
                raise AssertionError(f"CAM maps differ from torchcam's by {difference:.2e}")
            return
        correlation = float(torch.corrcoef(torch.stack([ours_raw.flatten(), maps.flatten()]))[0, 1])
        if correlation < 0.99:
            raise AssertionError(f"Score-CAM maps correlate with torchcam's at {correlation:.3f} only")

    return BenchCase(f"{method.name} {label} {layer} b{len(inputs)}", lambda: extractor(inputs, targets), theirs,
                     f"torchcam {method.__name__}", check=check, note=note)


def _peer_cases(quick: bool) -> list[BenchCase]:
    random = "random init"
    resnet50 = _random_model("resnet50", 224, 1)
    cases = [_pg_case(GradCAM, "resnet50 224", *resnet50, "layer4", random),
             _pg_case(GradCAMPlusPlus, "resnet50 224", *resnet50, "layer4", random)]
    if not quick:
        cases.append(_pg_case(GradCAM, "resnet50 224", *_random_model("resnet50", 224, 16), "layer4", random))
        cases[-1].repetitions = 3
        cases.append(_pg_case(GradCAM, "vgg16 224", *_random_model("vgg16", 224, 1), "features.29", random))
    cases.append(_pg_case(EigenCAM, "vgg16 224", *_random_model("vgg16", 224, 1), "features.29", random))

    default, photo_inputs = _default_model_photo(224)
    with torch.inference_mode():
        photo_targets = default.module(photo_inputs).argmax(1).tolist()
    cases.append(_pg_case(GradCAM, "efficientnet_lite0 224", default.module, photo_inputs, photo_targets, "blocks.6",
                          "real ImageNet weights, real photo, the last block (the CLI default is conv_head)"))
    leaf_model, leaf_inputs, leaf_targets = _leaf_batch(16)
    cases.append(_pg_case(GradCAM, "baseline 128", leaf_model, leaf_inputs, leaf_targets, "relu3",
                          "random init, leaf validation images"))
    cam_batch = 4 if quick else 16
    cases.append(_torchcam_case(CAM, "resnet50 224", *_random_model("resnet50", 224, cam_batch), "layer4", random))
    cases.append(_torchcam_case(ScoreCAM, "resnet18 112", *_random_model("resnet18", 112, 1), "layer3",
                                "random init; torchcam masks with raw activations (correlation check)"))
    return cases


def _zero_ablation_layer():
    """pytorch-grad-cam's ablation layer set to zero the channel (its rule on post-ReLU layers, and the paper's)
    also where the layer has negative values (there it uses ``min - 1e7``), so both sides compute the same maps."""
    from pytorch_grad_cam.ablation_layer import AblationLayer

    class ZeroAblationLayer(AblationLayer):
        def __call__(self, x):
            output = self.activations
            for i in range(output.size(0)):
                output[i, self.indices[i], :] = 0
            return output

    return ZeroAblationLayer()


def _ablation_cases(quick: bool) -> list[BenchCase]:
    """Ablation-CAM: convlens runs only the graph after the layer per ablated copy (convlens.engine.build_suffix);
    pytorch-grad-cam the whole model. Target <= 0.1x (issue 20)."""
    size = 64 if quick else 112
    default_size = 112 if quick else 224
    default, photo_inputs = _default_model_photo(default_size)
    with torch.inference_mode():
        photo_targets = default.module(photo_inputs).argmax(1).tolist()
    runs = [("resnet18", size, *_random_model("resnet18", size, 1), "layer4", "random init"),
            ("resnet50", size, *_random_model("resnet50", size, 1), "layer4", "random init"),
            ("efficientnet_lite0", default_size, default.module, photo_inputs, photo_targets, "blocks.6",
             "real ImageNet weights, real photo, the last block (linear bottleneck: the peer's ablation layer "
             "set to zero the channel, as convlens does)")]
    cases = []
    for name, side, model, inputs, targets, layer, note in runs:
        case = _pg_case(AblationCAM, f"{name} {side}", model, inputs, targets, layer,
                        f"{note}; convlens runs the graph after the layer per copy, the peer the whole model")
        if name == "efficientnet_lite0":
            peer_model = copy.deepcopy(model)
            import pytorch_grad_cam
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

            peer = pytorch_grad_cam.AblationCAM(peer_model, [peer_model.get_submodule(layer)],
                                                ablation_layer=_zero_ablation_layer(), batch_size=32)
            wanted = [ClassifierOutputTarget(t) for t in targets]
            case.peer = lambda peer=peer, wanted=wanted, inputs=inputs: peer(inputs, wanted)
        case.max_ratio = 0.1
        case.repetitions = 1 if name == "resnet50" else None
        cases.append(case)
    return cases


def cases(quick: bool) -> list[BenchCase]:
    return [_gradcam_case(quick), _scorecam_default_case(quick), _scorecam_dense_case(quick)] + _peer_cases(quick) \
        + _ablation_cases(quick)
