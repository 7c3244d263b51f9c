"""How a model travels to the Ray actors, so that every actor holds exactly the driver's weights.

- A model loaded from a convlens checkpoint (``load_model("run/best.safetensors")``) travels as its spec; the
  path must be readable on every node (a shared file system on a cluster).
- Any other model whose architecture convlens can rebuild (the baseline CNN, EfficientNet-Lite0, torchvision
  and timm models) travels as a convlens checkpoint (safetensors + JSON) put into Ray's object store: no
  shared file system needed, and never a pickle of weights.
- A custom ``nn.Module`` (architecture ``custom``) has no checkpoint form; it travels as the module itself,
  pickled by Ray from this process's memory (never from a file).

On the actor ``load()`` writes the checkpoint into a temporary folder and reads it with ``load_model``, the
same loader as everywhere else.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from convlens.models.checkpoint import FORMAT, find_checkpoint
from convlens.models.classifier import ImageClassifier
from convlens.models.loading import load_model

REBUILDABLE_PREFIXES = ("baseline", "efficientnet_lite0", "torchvision:", "timm:")


@dataclass(frozen=True)
class ModelPackage:
    """What an actor needs to rebuild the model: ``kind`` is ``spec``, ``checkpoint`` or ``object``."""

    kind: str
    spec: str = ""
    checkpoint: Any = None  # an ObjectRef of (safetensors bytes, metadata JSON)
    module: Any = None  # an ObjectRef of the ImageClassifier, for custom modules
    description: str = ""

    def load(self, device: str) -> ImageClassifier:
        import ray

        if self.kind == "spec":
            return load_model(self.spec, device=device)
        if self.kind == "checkpoint":
            weights, metadata = ray.get(self.checkpoint)
            folder = Path(tempfile.mkdtemp(prefix="convlens-model-"))
            (folder / "model.safetensors").write_bytes(weights)
            (folder / "model.json").write_text(metadata)
            model = load_model(str(folder / "model.safetensors"), device=device)
            model.spec = self.spec
            return model
        model = ray.get(self.module)
        model.module.eval()
        return model.to(device)


def package_model(model: ImageClassifier | nn.Module) -> ModelPackage:
    """Package ``model`` for the actors (see the module doc); call with Ray connected."""
    import ray

    if not isinstance(model, ImageClassifier):
        raise_bare_module()
    if find_checkpoint(model.spec) is not None:
        return ModelPackage("spec", spec=model.spec, description=f"checkpoint {model.spec}")
    if model.architecture.startswith(REBUILDABLE_PREFIXES):
        weights, metadata = checkpoint_bytes(model)
        return ModelPackage("checkpoint", spec=model.spec, checkpoint=ray.put((weights, metadata)),
                            description="convlens checkpoint in Ray's object store")
    return ModelPackage("object", spec=model.spec, module=ray.put(model),
                        description="custom module pickled into Ray's object store")


def checkpoint_bytes(model: ImageClassifier) -> tuple[bytes, str]:
    """The model as a convlens checkpoint in memory: safetensors bytes and the JSON beside them."""
    from safetensors.torch import save

    state = {key: value.detach().cpu().contiguous().clone() for key, value in model.module.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "architecture": model.architecture,
        "class_names": list(model.class_names),
        "preprocessing": model.preprocessing.to_dict(),
        "img_size": model.metadata.get("img_size", model.input_size[0]),
        "build_kwargs": model.metadata.get("build_kwargs", {}),
    }
    return save(state), json.dumps(metadata)


def raise_bare_module():
    from convlens.errors import ConvlensError

    raise ConvlensError("jobs on Ray read image files: pass an ImageClassifier (convlens.load_model, or "
                        "ImageClassifier(module, preprocessing, class_names)), not a bare nn.Module")


__all__ = ["ModelPackage", "checkpoint_bytes", "package_model"]
