"""The output folder every computing command writes: PNG figures, ``arrays.npz``, ``summary.json``.

The folder is built under a temporary name beside ``--out`` and renamed into place only when everything
succeeded, so an error never leaves a half-written folder behind.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlens.errors import ConvlensError

RECORDED_PACKAGES = ("convlens", "torch", "torchvision", "timm", "numpy", "pillow", "matplotlib")


def library_versions(packages: tuple[str, ...] = RECORDED_PACKAGES) -> dict[str, str]:
    """The Python version and the installed versions of ``packages`` (those not installed are left out)."""
    import importlib.metadata as metadata

    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.float().numpy() if value.is_floating_point() else value.numpy()
    return np.asarray(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return to_numpy(value).tolist()
    return value


class OutputDir:
    """Collects one command's results in a temporary folder; ``commit()`` moves it to ``path``."""

    def __init__(self, path: str | Path, command: str, force: bool = False) -> None:
        self.path = Path(path)
        self.force = force
        self.summary: dict[str, Any] = {"command": command}
        self.arrays: dict[str, np.ndarray] = {}
        self.compute_seconds = 0.0
        self.figures: list[str] = []
        _check_replaceable(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent))

    def file(self, name: str) -> Path:
        """Where to write ``name`` (inside the temporary folder)."""
        target = self.tmp / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    @contextmanager
    def timed(self) -> Iterator[None]:
        """Add the body's wall time to ``compute_seconds`` (the computation alone, not I/O or plotting)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.compute_seconds += time.perf_counter() - start

    def add_arrays(self, **arrays: Any) -> None:
        for name, value in arrays.items():
            self.arrays[name] = to_numpy(value)

    def save_figure(self, figure, name: str, dpi: int = 110) -> Path:
        import matplotlib.pyplot as plt

        target = self.file(name if name.endswith(".png") else f"{name}.png")
        figure.savefig(target, dpi=dpi, bbox_inches="tight")
        plt.close(figure)
        self.figures.append(target.name)
        return target

    def update(self, **fields: Any) -> None:
        self.summary.update(fields)

    def commit(self) -> Path:
        if "input" not in self.arrays:
            raise RuntimeError("every output folder records its preprocessed input as arrays['input']")
        np.savez_compressed(self.tmp / "arrays.npz", **self.arrays)
        summary = {**self.summary, "figures": self.figures, "arrays": sorted(self.arrays),
                   "compute_seconds": round(self.compute_seconds, 4), "versions": library_versions()}
        (self.tmp / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2))
        old = None
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old-{time.time_ns()}")
            self.path.rename(old)
        self.tmp.rename(self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.path

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _check_replaceable(path: Path) -> None:
    """Only an empty folder or an earlier convlens output may be replaced; anything else is the user's."""
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / "summary.json").exists())):
        raise ConvlensError(f"--out {path} exists and is not a convlens output folder; choose another path")


@contextmanager
def output_dir(path: str | Path, command: str, force: bool = False) -> Iterator[OutputDir]:
    """``with output_dir(out, "cam") as out: ...``: committed when the body succeeds, discarded if it raises."""
    out = OutputDir(path, command, force=force)
    try:
        yield out
        out.commit()
    except BaseException:
        out.discard()
        raise
