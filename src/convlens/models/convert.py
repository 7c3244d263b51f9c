"""``convlens.convert(model, out)``: any loadable model as a convlens checkpoint (safetensors + JSON).

Keras and ONNX models, the built-in architectures and convlens checkpoints convert. The folder holds
``model.safetensors`` and ``model.json`` (class names, preprocessing, and how to rebuild the module: for a Keras
model its architecture config, rebuilt by convlens's own converter, so the checkpoint loads with neither Keras
nor h5py installed; for an ONNX model onnx2torch's fx graph as JSON, every module a native one from a whitelist
(``onnx_graph``), so it loads with neither onnx nor onnx2torch), plus the usual ``arrays.npz``
(a probe ``input`` and the converted model's ``logits`` on it) and ``summary.json``. Before the folder is put
in place the checkpoint is loaded back and its logits compared with the converted model's; ``summary.json``
records the difference.
"""

from __future__ import annotations

from pathlib import Path

import torch

from convlens.errors import ConvlensError
from convlens.models.checkpoint import save_checkpoint
from convlens.models.classifier import ImageClassifier
from convlens.models.loading import load_model
from convlens.output import output_dir

CHECKPOINT_NAME = "model"
RELOAD_TOLERANCE = 1e-5


def convert(model: ImageClassifier | str | Path, out: str | Path, weights: str | Path | None = None,
            classes=None, preprocess=None, force: bool = False) -> Path:
    """Write ``model`` (an ImageClassifier, or a spec such as ``keras:model.h5``) to the folder ``out`` as a
    convlens checkpoint; ``load_model(out)`` loads it. Returns ``out``."""
    if not isinstance(model, ImageClassifier):
        model = load_model(model, weights=weights, device="cpu", classes=classes, preprocess=preprocess)
    elif classes is not None or preprocess is not None:
        from convlens.models.loading import with_overrides

        model = with_overrides(model, classes, preprocess)
    module, metadata = checkpoint_contents(model)
    probe = _probe_input(model)
    with output_dir(out, "convert", force=force) as folder:
        with folder.timed():
            logits = _original_logits(model, probe)
            weights_path = save_checkpoint(folder.file(CHECKPOINT_NAME), module, metadata)
            reloaded = load_model(weights_path, device="cpu")
            difference = float((_logits(reloaded.module, probe) - logits).abs().max())
        if difference > RELOAD_TOLERANCE:
            raise ConvlensError(f"the written checkpoint does not reproduce the model (max logit difference "
                                f"{difference:.2e}); nothing written")
        folder.add_arrays(input=probe, logits=logits)
        folder.update(model=model.describe(), source=model.spec, checkpoint=f"{CHECKPOINT_NAME}.safetensors",
                      reload_max_abs_difference=difference, class_names=model.class_names)
    return Path(out)


def checkpoint_contents(model: ImageClassifier) -> tuple[torch.nn.Module, dict]:
    """The module whose weights are written, and the metadata ``load_model`` rebuilds it from. An ONNX model's
    onnx2torch modules need onnx2torch (and onnx) to rebuild; its native twin (``onnx_graph``) does not."""
    metadata = checkpoint_metadata(model)
    if model.architecture != "onnx":
        return model.module, metadata
    from convlens.models.onnx_graph import to_native

    try:
        native, graph = to_native(model.module)
    except ConvlensError as exc:
        raise ConvlensError(f"{model.spec}: {exc}") from None
    return native, {**metadata, "build_kwargs": {"graph": graph}}


def checkpoint_metadata(model: ImageClassifier) -> dict:
    """What ``load_model`` needs to rebuild ``model`` from its weights."""
    if model.architecture == "custom":
        raise ConvlensError("convert needs a model loaded by convlens.load_model (a bare module has no recipe "
                            "to rebuild it); save its state_dict and load it with torchvision:/timm: instead")
    extra = {key: value for key, value in model.metadata.items() if key in ("img_size", "build_kwargs",
                                                                             "keras_version", "output_activation",
                                                                             "preprocess", "opset",
                                                                             "channels_last_input")}
    return {"architecture": model.architecture, "num_classes": len(model.class_names),
            "class_names": list(model.class_names), "preprocessing": model.preprocessing.to_dict(),
            "converted_from": model.spec, **extra}


def _probe_input(model: ImageClassifier) -> torch.Tensor:
    """A fixed pseudo-random image through the model's own normalisation."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, *model.input_size, generator=generator)
    return model.preprocessing.normalize(pixels)


def _original_logits(model: ImageClassifier, probe: torch.Tensor) -> torch.Tensor:
    try:
        return _logits(model.module, probe)
    except RuntimeError as exc:  # e.g. an ONNX graph with its batch size baked into a Reshape
        hint = (": was it exported with a fixed batch size? Export it with a dynamic batch axis"
                if model.architecture == "onnx" else "")
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ConvlensError(f"{model.spec}: the model fails on a batch of {len(probe)} images ({reason}){hint}; "
                            "nothing written") from None


def _logits(module: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    device = next(iter(module.parameters()), torch.empty(0)).device
    with torch.inference_mode():
        out = module(inputs.to(device))
    return (out[0] if isinstance(out, tuple) else out).float().cpu()
