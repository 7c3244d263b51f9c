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


# --- A real browser (the report and web app tests) ------------------------------------------------------------
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@pytest.fixture(scope="session")
def browser():
    """Headless Debian chromium driven by Playwright (``$CONVLENS_CHROMIUM``, default /usr/bin/chromium); the
    tests that use it skip cleanly when either is missing."""
    import os

    executable = Path(os.environ.get("CONVLENS_CHROMIUM", "/usr/bin/chromium"))
    if not executable.is_file():
        pytest.skip(f"no chromium at {executable} (set CONVLENS_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()
