"""Building architectures by name (torchvision, timm, the baseline CNN) and fitting their heads."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from convlens.errors import ConvlensError, nearest_names
from convlens.models.preprocessing import Preprocessing

# torchvision builds these differently when its pretrained weights are used; a local state_dict of such
# weights needs the same constructor arguments to give the same logits.
TORCHVISION_PRETRAINED_KWARGS = {
    "inception_v3": {"transform_input": True, "aux_logits": True, "init_weights": False},
    "googlenet": {"transform_input": True, "aux_logits": False, "init_weights": False},
}
# Constructor flags a spec may set for a local state_dict: torchvision:inception_v3:transform_input=false.
TORCHVISION_FLAGS = ("transform_input",)


def parse_torchvision_spec(spec: str) -> tuple[str, dict[str, bool]]:
    """``torchvision:NAME[:FLAG=true|false...]`` -> (NAME, flags)."""
    name, *extra = spec.split(":")[1:]
    flags = {}
    for item in extra:
        key, _, value = item.partition("=")
        if key not in TORCHVISION_FLAGS or value.lower() not in ("true", "false", "1", "0"):
            raise ConvlensError(f"model spec {spec!r}: after torchvision:NAME only {', '.join(TORCHVISION_FLAGS)}"
                                "=true|false may follow (e.g. torchvision:inception_v3:transform_input=false)")
        flags[key] = value.lower() in ("true", "1")
    if flags and name not in TORCHVISION_PRETRAINED_KWARGS:
        raise ConvlensError(f"model spec {spec!r}: {name} has no {', '.join(flags)} flag; only "
                            f"{', '.join(TORCHVISION_PRETRAINED_KWARGS)} do")
    return name, flags


def torchvision_build_kwargs(name: str, state: dict | None, flags: dict[str, bool],
                             source=None) -> tuple[dict, dict]:
    """Constructor arguments for a local state_dict of ``name`` and how they were chosen (for summary.json).

    inception_v3 and googlenet normalise their input a second time inside the model when ``transform_input``
    is set, which torchvision's pretrained weights need and its plain constructor leaves off: the same tensors
    give other logits under the other setting. The choice follows, in order: the spec's flag; torchvision's
    own download file (by name: pretrained); googlenet's auxiliary heads (only the plain constructor keeps them:
    plain); otherwise the pretrained setting, as a fine-tuned file most often is (say ``transform_input=false``
    for a file saved from the plain constructor)."""
    if name not in TORCHVISION_PRETRAINED_KWARGS:
        return {}, {}
    kwargs = dict(TORCHVISION_PRETRAINED_KWARGS[name])
    if state is None:  # random weights: the pretrained architecture, unless the spec says otherwise
        return {**kwargs, **flags}, {}
    has_aux = any(key.startswith(("AuxLogits.", "aux1.", "aux2.")) for key in state)
    kwargs["aux_logits"] = has_aux
    official = {Path(member.url).name for member in torchvision_weights_enum(name)}
    if "transform_input" in flags:
        kwargs["transform_input"], how = flags["transform_input"], "given in the model spec"
    elif source is not None and Path(str(source)).name in official:
        kwargs["transform_input"], how = True, "torchvision's pretrained weights file"
    elif name == "googlenet" and has_aux:
        kwargs["transform_input"], how = False, "auxiliary heads present: saved from the plain constructor"
    else:
        kwargs["transform_input"], how = True, ("assumed (pretrained-style); for a file saved from the plain "
                                                f"constructor use torchvision:{name}:transform_input=false")
    return kwargs, {"build_kwargs_origin": {"transform_input": how}}


def torchvision_weights_enum(name: str):
    from torchvision import models

    try:
        return models.get_model_weights(name)
    except ValueError:
        known = models.list_models(module=models)
        close = ", ".join(nearest_names(name, known))
        raise ConvlensError(f"unknown torchvision model {name!r}; nearest: {close}") from None


def torchvision_preprocessing(weights) -> Preprocessing:
    """The preprocessing torchvision documents for ``weights`` (an enum member); no download."""
    transform = weights.transforms()
    crop = transform.crop_size[0]
    return Preprocessing(
        crop=(crop, crop),
        resize=transform.resize_size[0],
        interpolation=transform.interpolation.value,
        mean=tuple(transform.mean),
        std=tuple(transform.std),
    )


def build_torchvision(name: str, weights=None, **kwargs) -> nn.Module:
    from torchvision import models

    torchvision_weights_enum(name)  # validates the name with a helpful error
    try:
        return models.get_model(name, weights=weights, **kwargs)
    except (OSError, RuntimeError) as exc:
        if weights is not None and ("urlopen" in str(exc) or "URL" in str(exc) or "connect" in str(exc).lower()):
            raise ConvlensError(
                f"could not download torchvision weights {weights} ({exc.__class__.__name__}); "
                "save them where the internet is reachable and pass the file with --weights PATH"
            ) from None
        raise


def build_timm(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    import timm

    if not timm.is_model(name):
        close = ", ".join(nearest_names(name, timm.list_models()))
        raise ConvlensError(f"unknown timm model {name!r}; nearest: {close}")
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError) as exc:
        if pretrained:
            raise ConvlensError(
                f"could not download timm weights for {name} ({exc.__class__.__name__}); "
                "pass a local weights file with --weights PATH"
            ) from None
        raise


def timm_preprocessing(module: nn.Module) -> Preprocessing:
    import timm

    config = timm.data.resolve_model_data_config(module)
    _, height, width = config["input_size"]
    crop_pct = config.get("crop_pct") or 0.875
    return Preprocessing(
        crop=(height, width),
        resize=int(math.floor(min(height, width) / crop_pct)),
        interpolation=config.get("interpolation", "bilinear"),
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
    )


def last_linear(module: nn.Module) -> tuple[str, nn.Linear]:
    """The classifier: the last ``nn.Linear`` registered in the model."""
    found = [(name, layer) for name, layer in module.named_modules() if isinstance(layer, nn.Linear)]
    if not found:
        raise ConvlensError(f"{type(module).__name__} has no nn.Linear classifier to replace")
    return found[-1]


def replace_head(module: nn.Module, num_classes: int) -> nn.Module:
    """A new linear classifier for ``num_classes``; global pooling + linear structure is kept (CAM applies)."""
    if hasattr(module, "reset_classifier"):  # timm models know their own head
        module.reset_classifier(num_classes)
        return module
    name, old = last_linear(module)
    parent_name, _, attribute = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, attribute, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return module


def output_features(module: nn.Module) -> int | None:
    try:
        return last_linear(module)[1].out_features
    except ConvlensError:
        return None


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from ``.safetensors`` or a torch file (``weights_only=True``), unwrapped and de-prefixed."""
    path = Path(path)
    if not path.is_file():
        raise ConvlensError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the file's fault
        raise ConvlensError(unreadable_weights(path, exc)) from None
    for key in ("state_dict", "model_state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConvlensError(f"{path}: does not hold a state_dict (a mapping of names to tensors)")
    if all(key.startswith("module.") for key in state):  # saved from DataParallel
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def unreadable_weights(path: Path, exc: Exception) -> str:
    """convlens's own one line for a weights file it cannot read (never torch's advice to unpickle)."""
    text = str(exc)
    if "not an allowed global" in text or "Unsupported global" in text:
        return (f"{path}: not a plain state_dict (it holds pickled Python objects, which convlens never "
                "unpickles); save the weights alone with torch.save(model.state_dict(), PATH) or as .safetensors")
    return (f"{path}: not a readable weights file ({exc.__class__.__name__}); convlens reads a state_dict "
            "saved with torch.save(model.state_dict(), PATH) or a .safetensors file")


def load_weights_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` with a one-line error that names the first mismatches."""
    check_weights_fit(module, state, source)
    module.load_state_dict(state)


def check_weights_fit(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse (one line, naming the first mismatches) a state whose keys or shapes differ from ``module``'s
    (which may live on the meta device: only shapes are compared)."""
    own = module.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    mismatched = [key for key in own if key in state and own[key].shape != state[key].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if mismatched:
            key = mismatched[0]
            parts.append(f"{len(mismatched)} of other shape (e.g. {key}: {tuple(state[key].shape)} in file, "
                         f"{tuple(own[key].shape)} in model)")
        raise ConvlensError(f"{source} does not fit {type(module).__name__}: " + "; ".join(parts))


def head_classes_in(state: dict[str, torch.Tensor], module: nn.Module) -> int | None:
    """How many classes the classifier in ``state`` has, when it differs from ``module``'s."""
    try:
        name, layer = last_linear(module)
    except ConvlensError:
        return None
    weight = state.get(f"{name}.weight")
    if weight is not None and weight.ndim == 2 and weight.shape[0] != layer.out_features:
        return int(weight.shape[0])
    return None
