"""Demo section: the leaf study's own Keras model (Keras 2.3 JSON + HDF5), converted, explained like any other.

Runs when ``../shared/data`` (``leaf-keras/`` and ``leaf/``) is found beside the repository or the working
directory; otherwise the section says so and draws nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from convlens.demo.core import DemoContext, DemoSection
from convlens.render import plt

# The validation images of the leaf folder that are not copies of training images (docs/results.md).
NEW_VALIDATION_IMAGES = ("HR/84.jpg", "HR/92.jpg", "normal/142.jpg", "normal/88.jpg", "sick/158.jpg")
FEATURE_LAYERS = ["conv2d_35_relu", "conv2d_36_relu", "conv2d_37_relu"]
CAM_LAYER = "conv2d_37_relu"  # the last ReLU before pooling: 8 x 8 at the 32-px input


def shared_data() -> Path | None:
    """``CONVLENS_SHARED_DATA``, else ``shared/data`` beside the repository or the working directory."""
    candidates = [os.environ.get("CONVLENS_SHARED_DATA"), Path(__file__).resolve().parents[4] / "shared" / "data",
                  Path.cwd().parent / "shared" / "data", Path.cwd() / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "leaf-keras" / "baseline_CNN30.json").is_file():
            return Path(candidate)
    return None


def load_leaf_keras(data: Path, device=None):
    from convlens.models import load_model

    folder = data / "leaf-keras"
    return load_model(f"keras:{folder / 'baseline_CNN30.json'}", weights=folder / "baseline_CNN_weight30.h5",
                      classes=data / "leaf" / "train", preprocess="unit", device=device)


def section(context: DemoContext) -> DemoSection:
    """Filters, feature maps and Grad-CAM of the converted leaf Keras model on leaf images."""
    title = "Your own Keras model: the leaf study's baseline CNN"
    data = shared_data()
    if data is None:
        return DemoSection(title, "Skipped: the leaf data (../shared/data/leaf-keras and leaf/) is not here.")
    from convlens.featuremaps import feature_maps
    from convlens.filters import filters

    model = load_leaf_keras(data, device=str(context.model.device))
    images = [data / "leaf" / "validation" / name for name in NEW_VALIDATION_IMAGES]
    images = [path for path in images if path.is_file()]
    if not images:
        return DemoSection(title, "Skipped: the leaf validation images are not here.")
    base = context.out / "keras-leaf"
    folders = [filters(model, "conv2d_35").save(base / "filters"),
               feature_maps(model, images[-1], FEATURE_LAYERS, progress=context.progress).save(base / "featuremaps")]
    figures = [str(path.relative_to(context.out)) for folder in folders for path in _pngs(folder)[:2]]
    figures.append(str(_gradcam_figure(model, images, base / "gradcam.png").relative_to(context.out)))
    for folder in (_top9(model, data / "leaf" / "train", base / "top9"), _occlusion(model, images[-1],
                                                                                        base / "occlusion")):
        figures += [str(path.relative_to(context.out)) for path in _pngs(folder)[:1]]
    spec = "keras:baseline_CNN30.json --weights baseline_CNN_weight30.h5 --classes leaf/train"
    text = (f"`convlens layers {spec}` lists the Keras layer names (each fused ReLU is its own module, "
            "`conv2d_35_relu`); the converted module's probabilities equal Keras's on every leaf image. Its 64 "
            "first-layer 5x5 filters, the strongest feature maps of each convolution on a leaf, Grad-CAM at "
            f"`{CAM_LAYER}` for the predicted class on the {len(images)} validation images that are not copies "
            f"of training images (32 x 32 inputs, as the model was trained), the 9 strongest activations of "
            f"{len(TOP9_UNITS)} units of `{CAM_LAYER}` over the training images with their deconvnet projections, "
            f"and occlusion of {images[-1].name}.")
    return DemoSection(title, text, figures)


TOP9_UNITS = [0, 1, 2, 3, 4, 5, 6, 7]


def _top9(model, folder: Path, out: Path) -> Path:
    from convlens.zeiler import top_activations

    return top_activations(model, folder, CAM_LAYER, units=TOP9_UNITS, k=9, rule="deconvnet").save(out)


def _occlusion(model, image: Path, out: Path) -> Path:
    from convlens.occlusion import occlusion

    return occlusion(model, image, window=8, stride=2, layer=CAM_LAYER).save(out)


def _pngs(folder: Path) -> list[Path]:
    import json

    names = json.loads((folder / "summary.json").read_text()).get("figures", [])
    return [folder / name for name in names]


def _gradcam_figure(model, images: list[Path], target: Path) -> Path:
    from convlens.cam import GradCAM
    from convlens.render import overlay

    inputs = model.prepare(images)
    with GradCAM(model, CAM_LAYER) as cam:
        result = cam(inputs, "predicted")
    probabilities = result.logits.softmax(1)
    figure, axes = plt.subplots(2, len(images), figsize=(2.1 * len(images), 4.6), squeeze=False)
    for index, path in enumerate(images):
        display = model.preprocessing.to_display(inputs[index])
        predicted = int(result.predicted[index])
        axes[0, index].imshow(display, interpolation="nearest")
        axes[0, index].set_title(f"{path.parent.name}/{path.name}", fontsize=8)
        axes[1, index].imshow(overlay(display, result.maps[index].numpy()), interpolation="nearest")
        axes[1, index].set_title(f"{model.class_name(predicted)} {100 * float(probabilities[index, predicted]):.0f}%",
                                 fontsize=8)
        for axis in axes[:, index]:
            axis.axis("off")
    figure.suptitle(f"Grad-CAM at {CAM_LAYER} (Keras leaf model, converted)", fontsize=10)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return target
