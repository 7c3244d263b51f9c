"""Shared fixtures: real data where it exists, small models, images made on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from testkit import SHARED_DATA, make_image  # noqa: F401  (re-exported for older imports)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository; tests that need it skip cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def default_model():
    """The real offline default (EfficientNet-Lite0 with ImageNet weights), on the CPU."""
    import convlens

    return convlens.load_model("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="session")
def sample_photos(tmp_path_factory) -> list[Path]:
    """scikit-image's coffee, chelsea, astronaut and rocket as PNG files."""
    from convlens.demo import sample_photos as write_photos

    return write_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture
def seeded():
    torch.manual_seed(0)
    np.random.seed(0)
    return 0
