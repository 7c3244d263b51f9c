"""Feature visualization against Lucent (``torch-lucent``): the same model, units, steps, image size, Fourier
parametrization with decorrelated colour, Lucid's standard transforms and Adam at 0.05.

Lucent optimises one unit per call (its documented use); convlens optimises all units in one batch and stops the
forward pass at the layer. The check: convlens's mean activation reached over the units is at least Lucent's
(both measured the same way, on the final images without transformation). Target: time per unit <= 0.5x.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from bench.harness import DEVICE, BenchCase

LAYER = "blocks.6"


def _models():
    import convlens

    model = convlens.load_model("efficientnet_lite0", device=str(DEVICE))
    peer = copy.deepcopy(model.module).eval()  # Lucent leaves hooks on every module it sees: its own copy
    return model, peer


def _reached(model, images: torch.Tensor, units: list[int]) -> np.ndarray:
    from convlens.hooks import capture

    with capture(model, LAYER) as seen, torch.inference_mode():
        model.module(model.preprocessing.normalize(images.to(DEVICE)))
    activation = seen[LAYER]
    return activation[torch.arange(len(units)), torch.tensor(units)].mean(dim=(1, 2)).float().cpu().numpy()


def _case(quick: bool) -> BenchCase:
    from lucent.optvis import param, render, transform

    from convlens.featureviz import feature_viz

    units = list(range(4 if quick else 8))
    steps, size = (32, 128) if quick else (128, 128)
    model, peer_module = _models()
    normalize = model.preprocessing.normalize

    def ours():
        return feature_viz(model, LAYER, units, steps=steps, size=size, seed=0).arrays()["images"]

    def lucent():
        torch.manual_seed(0)
        images = []
        for unit in units:
            found = render.render_vis(
                peer_module, f"{LAYER.replace('.', '_')}:{unit}",
                param_f=lambda: param.image(size, fft=True, decorrelate=True),
                transforms=transform.standard_transforms + [normalize], thresholds=(steps,), preprocess=False,
                progress=False, show_image=False, fixed_image_size=size)
            images.append(torch.from_numpy(found[-1][0]).permute(2, 0, 1))
        return torch.stack(images).numpy()

    def check(ours_images, lucent_images) -> None:
        mine = _reached(model, torch.from_numpy(ours_images), units)
        theirs = _reached(model, torch.from_numpy(lucent_images), units)
        case.note += f"; activation reached, mean over units: convlens {mine.mean():.3g}, Lucent {theirs.mean():.3g}"
        if mine.mean() < theirs.mean():
            raise AssertionError(f"convlens reached {mine.mean():.3f} on average, Lucent {theirs.mean():.3f}")

    case = BenchCase(
        f"featureviz efficientnet_lite0 {LAYER} {len(units)} units x {steps} steps {size} px", ours, lucent,
        "lucent render_vis (one call per unit)", check=check, max_ratio=0.5, repetitions=1 if quick else 3,
        note=f"same model, layer, units {units[0]}-{units[-1]}, {steps} Adam steps at 0.05, {size} px, Fourier "
             "parametrization with decorrelated colour, Lucid's standard transforms; each side optimises every "
             "unit (convlens in one batch, Lucent one call per unit), so ratio = time per unit; check: the "
             "channel's mean activation on the final images (hooked alike for both) >= Lucent's")
    return case


def cases(quick: bool) -> list[BenchCase]:
    return [_case(quick)]
