"""The output folder every computing command writes: PNG figures, ``arrays.npz``, ``summary.json``.

The folder is built under a temporary name beside ``--out`` and renamed into place only when everything
succeeded, so an error never leaves a half-written folder behind. ``--out`` is never allowed to cost a user a
file: ``convlens.out_rules`` says which folders may be replaced (convlens's own, by its manifest; others only
with ``force``; never a run, the current or home folder) and how (a lock on the parent folder, pid-tagged
temporary folders, symlinks followed to a folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlens.errors import ConvlensError
from convlens.out_rules import (  # noqa: F401 - MANIFEST, is_run_folder, read_manifest: re-exported
    MANIFEST,
    check_out,
    check_out_locked,
    hidden_name,
    is_run_folder,
    locked,
    make_parents,
    new_hidden_dir,
    read_manifest,
    remove_created,
    remove_leftovers,
    swap_in,
    write_manifest,
)

RECORDED_PACKAGES = ("convlens", "torch", "torchvision", "timm", "numpy", "pillow", "matplotlib")
UNTRAINED_NOTE = "UNTRAINED (random weights)"


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
        self.requested = Path(path)
        self.command = command
        self.force = force
        self.summary: dict[str, Any] = {"command": command}
        self.arrays: dict[str, np.ndarray] = {}
        self.compute_seconds = 0.0
        self.figures: list[str] = []
        self.unstamped: list[str] = []  # figures saved before the summary said whether the model is trained
        self.path = check_out(path, force=force, command=command)
        self.created = make_parents(self.path.parent)
        try:
            self.tmp = new_hidden_dir(self.path)
        except BaseException:
            remove_created(self.created)
            raise

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

    @property
    def untrained(self) -> bool:
        """Whether the summary's model has random weights (its figures then carry a visible note)."""
        model = self.summary.get("model")
        return isinstance(model, dict) and model.get("weights") == "random"

    def save_figure(self, figure, name: str, dpi: int = 110) -> Path:
        import matplotlib.pyplot as plt

        target = self.file(name if name.endswith(".png") else f"{name}.png")
        if self.untrained:
            stamp_untrained(figure)
        figure.savefig(target, dpi=dpi, bbox_inches="tight")
        plt.close(figure)
        self.figures.append(target.name)
        if not self.untrained:
            self.unstamped.append(target.name)
        return target

    def update(self, **fields: Any) -> None:
        self.summary.update(fields)

    def commit(self) -> Path:
        if "input" not in self.arrays:
            raise RuntimeError("every output folder records its preprocessed input as arrays['input']")
        try:
            if self.untrained:  # the model was named after some figures were drawn: mark those PNGs now
                for name in self.unstamped:
                    stamp_untrained_png(self.tmp / name)
            np.savez_compressed(self.tmp / "arrays.npz", **self.arrays)
            summary = {**self.summary, "figures": self.figures, "arrays": sorted(self.arrays),
                       "compute_seconds": round(self.compute_seconds, 4), "versions": library_versions()}
            (self.tmp / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2))
            write_manifest(self.tmp, self.command)
            with locked(self.path.parent):
                remove_leftovers(self.path)
                # again: another process may have written there meanwhile
                check_out_locked(self.path, self.requested, force=self.force, command=self.command)
                aside = swap_in(self.tmp, self.path)
        except OSError as exc:  # a full disk, a folder made read-only meanwhile: one line, nothing half-written
            raise ConvlensError(f"--out {self.requested}: cannot write there ({exc.strerror or exc})") from None
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        return self.path

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        remove_created(self.created)


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


@contextmanager
def folder_in_place(path: str | Path, command: str, force: bool = False) -> Iterator[Path]:
    """For outputs that must be built at their final path (the demo: its runs record absolute paths).

    The same rules as ``output_dir``; an earlier output is set aside (not deleted) until the new one is
    complete, and put back if the body raises; the new folder is removed then."""
    path = check_out(path, force=force, command=command)
    created = make_parents(path.parent)
    aside = None
    try:
        with locked(path.parent):
            remove_leftovers(path)
            check_out_locked(path, force=force, command=command)
            if path.exists():
                aside = hidden_name(path, "old")
                os.rename(path, aside)
            path.mkdir()
            write_manifest(path, command, complete=False)
    except OSError as exc:
        remove_created(created)
        raise ConvlensError(f"--out {path}: cannot write there ({exc.strerror})") from None
    try:
        yield path
        write_manifest(path, command)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        if aside is not None:
            with contextlib.suppress(OSError):
                os.rename(aside, path)
        remove_created(created)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


# -- figures of untrained models ---------------------------------------------------------------------------------
def stamp_untrained(figure) -> None:
    """A visible note on a matplotlib figure whose model has random weights."""
    figure.text(0.5, 1.0, UNTRAINED_NOTE, ha="center", va="bottom", fontsize=13, fontweight="bold",
                color="white", bbox={"facecolor": "#c0392b", "edgecolor": "none", "pad": 4})


def stamp_untrained_png(path: Path) -> None:
    """The same note as a red band above a PNG already written."""
    from PIL import Image, ImageDraw, ImageFont

    with Image.open(path) as image:
        image = image.convert("RGB")
    band = max(22, image.height // 20)
    stamped = Image.new("RGB", (image.width, image.height + band), (192, 57, 43))
    stamped.paste(image, (0, band))
    draw = ImageDraw.Draw(stamped)
    font = ImageFont.load_default(size=int(band * 0.7))
    draw.text((image.width / 2, band / 2), UNTRAINED_NOTE, fill="white", font=font, anchor="mm")
    stamped.save(path)
