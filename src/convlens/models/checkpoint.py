"""convlens checkpoints: ``NAME.safetensors`` (weights) beside ``NAME.json`` (everything else).

The JSON holds ``format``, ``architecture`` (a spec ``build_architecture`` understands), ``num_classes``,
``class_names``, ``img_size``, ``preprocessing``, ``build_kwargs`` and whatever the writer adds (training
settings, epoch, metrics). A training run directory holds ``best`` and ``last`` checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from convlens.errors import ConvlensError

FORMAT = "convlens-checkpoint"
RUN_DIR_CHECKPOINTS = ("best", "model", "last")


def save_checkpoint(path: str | Path, module: nn.Module, metadata: dict) -> Path:
    """Write ``path.safetensors`` and ``path.json`` (``path`` without suffix); returns the weights path."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights_path = path.with_suffix(".safetensors")
    # safetensors refuses shared storage; contiguous clones keep the file self-contained.
    state = {key: value.detach().cpu().contiguous().clone() for key, value in module.state_dict().items()}
    save_file(state, str(weights_path))
    _apply_umask(weights_path)
    path.with_suffix(".json").write_text(json.dumps({"format": FORMAT, **metadata}, indent=2))
    return weights_path


def _apply_umask(path: Path) -> None:
    """safetensors creates its file 0600; a checkpoint should be readable like every other file written."""
    path.chmod(0o666 & ~_umask())


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (os.umask alone sets it for a moment,
    which other threads would see)."""
    import os

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def find_checkpoint(path: str | Path) -> Path | None:
    """The weights file a model spec points to: a ``.safetensors`` with a ``.json`` beside it, or a
    directory holding ``best``, ``model`` or ``last`` checkpoints (in that order)."""
    path = Path(path)
    candidates = [path.with_suffix(".safetensors")] if path.suffix in (".safetensors", ".json") else []
    if path.is_dir():
        candidates += [path / f"{stem}.safetensors" for stem in RUN_DIR_CHECKPOINTS]
    for weights in candidates:
        if weights.is_file() and weights.with_suffix(".json").is_file():
            return weights
    return None


def read_metadata(weights_path: Path) -> dict:
    meta_path = weights_path.with_suffix(".json")
    try:
        metadata = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConvlensError(f"{meta_path}: unreadable checkpoint metadata ({exc})") from None
    if metadata.get("format") != FORMAT:
        raise ConvlensError(f"{meta_path}: not a convlens checkpoint (no \"format\": \"{FORMAT}\")")
    return metadata
