"""Helpers the tests import by name (``from testkit import make_image``). Kept out of ``conftest.py``: with several
conftest files in the tree, ``from testkit import ...`` would reach whichever was imported last."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# ``../shared/data`` beside the repository (CONVLENS_SHARED_DATA overrides it, e.g. from a git worktree).
SHARED_DATA = Path(os.environ.get("CONVLENS_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def make_image(path: Path, size=(48, 40), seed: int = 0, mode: str = "RGB") -> Path:
    """A random-noise image file of ``size`` (width, height)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(path)
    return path


def run_cli(args, capsys):
    """``convlens ARGS`` in this process: (exit code, stdout, stderr)."""
    from convlens.cli import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err
