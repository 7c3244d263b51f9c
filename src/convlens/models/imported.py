"""What a bare imported model (Keras, ONNX) lacks: class names and preprocessing.

Each comes from, in order: the caller (``classes=`` / ``preprocess=``, the CLI's ``--classes`` /
``--preprocess``), a sidecar ``NAME.convlens.json`` beside the model file, or a default (``class_0``...,
ImageNet's names for 1000 outputs; Keras ``unit`` preprocessing, x / 255).

- classes: a list, a comma list (``HR,normal,sick``), a text file (one name a line), or an image folder whose
  subfolders give the names in sorted order (as Keras's ``flow_from_directory`` numbers them);
- preprocess: ``MODE[:INTERPOLATION]`` with MODE one of ``unit``, ``raw``, ``tf``, ``torch``, ``caffe``
  (``preprocessing.KERAS_MODES``) and the resize interpolation (default ``nearest``, as Keras's ``load_img``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from convlens.errors import ConvlensError
from convlens.models.preprocessing import Preprocessing, keras_preprocessing

SIDECAR_SUFFIX = ".convlens.json"


def sidecar_path(model_path: str | Path) -> Path:
    path = Path(model_path)
    return path.with_name(path.stem + SIDECAR_SUFFIX)


def read_sidecar(model_path: str | Path) -> dict:
    """``NAME.convlens.json`` beside the model (``{}`` when there is none)."""
    path = sidecar_path(model_path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConvlensError(f"{path}: unreadable sidecar ({exc})") from None
    if not isinstance(data, dict):
        raise ConvlensError(f"{path}: a sidecar must be a JSON object with class_names and preprocess")
    return data


def parse_classes(classes: str | Path | Sequence[str]) -> list[str]:
    """Class names from a list, a comma list, a text file, or an image folder's sorted subfolders."""
    if not isinstance(classes, (str, Path)):
        return [str(name) for name in classes]
    path = Path(classes)
    if path.is_dir():
        names = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not names:
            raise ConvlensError(f"--classes {path}: the folder has no subfolders to take class names from")
        return names
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    names = [name.strip() for name in str(classes).split(",") if name.strip()]
    if len(names) < 2 and ("/" in str(classes) or str(classes).endswith(".txt")):
        raise ConvlensError(f"--classes {classes}: no such file or folder")
    return names


def resolve_classes(classes, sidecar: dict, count: int) -> list[str]:
    if classes is None:
        classes = sidecar.get("class_names")
    if classes is None:
        if count == 1000:
            from convlens.models.imagenet import imagenet_classes

            return list(imagenet_classes())
        return [f"class_{i}" for i in range(count)]
    names = parse_classes(classes)
    if len(names) != count:
        raise ConvlensError(f"{len(names)} class names given ({', '.join(names[:4])}...) for a model with {count} "
                            "outputs")
    return names


def resolve_preprocessing(preprocess, sidecar: dict, size: tuple[int, int], default: str = "unit") -> Preprocessing:
    """``preprocess`` (a Preprocessing, or ``MODE[:INTERPOLATION]``), else the sidecar's, else ``default``."""
    if isinstance(preprocess, Preprocessing):
        return preprocess
    size = tuple(sidecar.get("input_size", size))
    text = preprocess or sidecar.get("preprocess") or default
    mode, _, interpolation = str(text).partition(":")
    interpolation = interpolation or sidecar.get("interpolation", "nearest")
    return keras_preprocessing(mode.strip().lower(), size, interpolation.strip().lower())


def preprocess_mode(preprocess, sidecar: dict, default: str) -> str:
    if isinstance(preprocess, Preprocessing):
        return "custom"
    return str(preprocess or sidecar.get("preprocess") or default)
