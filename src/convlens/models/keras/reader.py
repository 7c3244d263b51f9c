"""Reading Keras model files without Keras: the architecture (JSON) and the weights (HDF5), as plain data.

- a full-model ``.h5`` (Keras 2 ``model.save``, or Keras 3's legacy HDF5): ``model_config`` attribute + the
  ``model_weights`` group, one subgroup per layer listing its ``weight_names`` in Keras's order;
- a ``.keras`` archive (Keras 3): a zip with ``config.json`` and ``model.weights.h5`` (``layers/KEY/vars/0..``,
  each ``vars`` group naming its layer);
- an architecture ``.json`` (``model.to_json()``) with a weights file in either HDF5 layout.

Nothing in the file is executed: the config is read as JSON and the weights as arrays.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convlens.errors import ConvlensError

IMPORT_EXTRA = "pip install 'convlens[import]'"


def require_h5py():
    try:
        import h5py
    except ImportError:
        raise ConvlensError(f"reading Keras models needs h5py: {IMPORT_EXTRA}") from None
    return h5py


@dataclass
class WeightNode:
    """The weights of one layer (``arrays`` in Keras's order, ``names`` where the file has them) and, for a
    nested model, of its layers (``children``; the legacy format lists a nested model's weights flat)."""

    arrays: list[np.ndarray] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    children: dict[str, WeightNode] = field(default_factory=dict)

    def child(self, name: str) -> WeightNode | None:
        if name in self.children:
            return self.children[name]
        # Legacy HDF5: a nested model's weights are named ``.../LAYER/VARIABLE[:0]``.
        picked = [(n, a) for n, a in zip(self.names, self.arrays, strict=True) if _owner(n) == name]
        if not picked:
            return None
        return WeightNode([a for _, a in picked], [n for n, _ in picked])


def _owner(weight_name: str) -> str:
    parts = weight_name.split("/")
    return parts[-2] if len(parts) >= 2 else ""


@dataclass
class KerasFile:
    """A model's architecture config (``{"class_name", "config"}``), its weights by layer, and where from."""

    config: dict
    weights: WeightNode
    keras_version: str
    source: str

    @property
    def keras_major(self) -> int:
        try:
            return int(self.keras_version.split(".")[0])
        except ValueError:
            return 3

    def layer_weights(self, path: tuple[str, ...]) -> WeightNode | None:
        node: WeightNode | None = self.weights
        for name in path:
            node = node.child(name) if node is not None else None
        return node


def read_keras(path: str | Path, weights: str | Path | None = None) -> KerasFile:
    """The architecture and weights of a ``.h5`` / ``.keras`` / ``.json`` model (``weights``: an HDF5 file)."""
    path = Path(path)
    if not path.is_file():
        raise ConvlensError(f"Keras model file not found: {path}")
    if weights is not None and not Path(weights).is_file():
        raise ConvlensError(f"weights file not found: {weights}")
    if zipfile.is_zipfile(path):
        config, version, tree = _read_keras_archive(path)
    elif path.suffix.lower() == ".json":
        config, version, tree = _read_json(path), "", None
    else:
        config, version, tree = _read_full_h5(path)
    if weights is not None:
        tree, file_version = read_weights(Path(weights))
        version = version or file_version
    elif tree is None:
        raise ConvlensError(f"{path} holds the architecture only; pass its weights with --weights FILE.h5")
    version = version or config.get("keras_version", "")
    return KerasFile(config, tree, str(version or "3"), str(path))


def _read_json(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConvlensError(f"{path}: not a Keras architecture JSON ({exc})") from None
    return _check_config(config, str(path))


def _check_config(config, source: str) -> dict:
    if not isinstance(config, dict) or "class_name" not in config or "config" not in config:
        raise ConvlensError(f"{source}: not a Keras model config (expected {{\"class_name\", \"config\"}})")
    return config


def _open_h5(source, label: str):
    h5py = require_h5py()
    try:
        return h5py.File(source, "r")
    except OSError as exc:
        raise ConvlensError(f"{label}: not a readable HDF5 file ({str(exc).splitlines()[0]})") from None


def _read_full_h5(path: Path) -> tuple[dict, str, WeightNode]:
    with _open_h5(path, str(path)) as h5:
        if "model_config" not in h5.attrs:
            if "layer_names" in h5.attrs or "layers" in h5:
                raise ConvlensError(f"{path} holds weights only, without the architecture; pass the architecture "
                                    f"JSON (model.to_json()) as keras:ARCH.json --weights {path}")
            raise ConvlensError(f"{path}: an HDF5 file without a Keras model (no model_config)")
        config = _check_config(json.loads(_text(h5.attrs["model_config"])), str(path))
        version = _text(h5.attrs.get("keras_version", ""))
        group = h5["model_weights"] if "model_weights" in h5 else None
        if group is None:
            raise ConvlensError(f"{path}: the model was saved without its weights (include_optimizer/weights off)")
        return config, version, _legacy_tree(group, str(path))


def _read_keras_archive(path: Path) -> tuple[dict, str, WeightNode]:
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
            metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in archive.namelist() else {}
            weights = archive.read("model.weights.h5")
    except (KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise ConvlensError(f"{path}: not a Keras .keras archive ({exc})") from None
    with _open_h5(io.BytesIO(weights), f"{path}:model.weights.h5") as h5:
        tree = _keras3_tree(h5)
    return _check_config(config, str(path)), str(metadata.get("keras_version", "3")), tree


def read_weights(path: Path) -> tuple[WeightNode, str]:
    """A weights-only HDF5 file in Keras 2's layout (``layer_names``) or Keras 3's (``layers/.../vars``)."""
    with _open_h5(path, str(path)) as h5:
        version = _text(h5.attrs.get("keras_version", ""))
        if "model_weights" in h5:
            return _legacy_tree(h5["model_weights"], str(path)), version
        if "layer_names" in h5.attrs:
            return _legacy_tree(h5, str(path)), version
        if "layers" in h5:
            return _keras3_tree(h5), version or "3"
        raise ConvlensError(f"{path}: no Keras weights in this HDF5 file (neither layer_names nor layers/)")


def _legacy_tree(group, source: str) -> WeightNode:
    root = WeightNode()
    for layer in (_text(name) for name in group.attrs.get("layer_names", [])):
        if layer not in group:
            raise ConvlensError(f"{source}: layer {layer} is listed but has no weights group")
        names = [_text(n) for n in group[layer].attrs.get("weight_names", [])]
        arrays = [np.asarray(group[layer][name]) for name in names]
        root.children[layer] = WeightNode(arrays, [n.removesuffix(":0") for n in names])
    return root


def _keras3_tree(group) -> WeightNode:
    """``layers/KEY/vars/0..`` (recursively for nested models); layers are keyed by the name on ``vars``."""
    node = WeightNode()
    if "vars" in group:
        variables = group["vars"]
        node.arrays = [np.asarray(variables[str(i)]) for i in range(len(variables))]
    for key in group.get("layers", {}):
        child_group = group["layers"][key]
        name = _text(child_group["vars"].attrs.get("name", key)) if "vars" in child_group else key
        node.children[name] = _keras3_tree(child_group)
    return node


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value.item())
    return str(value)
