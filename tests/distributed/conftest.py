"""One real local Ray for the whole session (``ray.init(num_cpus=2)``: startup is slow, the CPU shared), a
tiny baseline CNN saved as a convlens checkpoint, and a small generated folder of labelled images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def ray_instance(tmp_path_factory):
    """Skips where the convlens[ray] extra is not installed (test_without_ray.py runs everywhere)."""
    import tempfile

    ray = pytest.importorskip("ray", reason="the convlens[ray] extra is not installed")

    from convlens.distributed.cluster import quiet_ray_data

    # Ray's socket paths must stay short: a folder directly under the system temp, not pytest's deep one.
    temp_dir = tempfile.mkdtemp(prefix="convlens-ray-test-")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False,
             configure_logging=False)
    quiet_ray_data()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def checkpoint_model(tmp_path_factory):
    """The baseline CNN at 32 px with seeded weights, saved and loaded back as a convlens checkpoint."""
    import convlens
    from convlens.models import save_checkpoint
    from convlens.models.loading import baseline_preprocessing

    torch.manual_seed(7)
    module = convlens.load_model("baseline", device="cpu").module
    path = tmp_path_factory.mktemp("model") / "tiny"
    save_checkpoint(path, module, {"architecture": "baseline", "class_names": ["cats", "dogs", "birds"],
                                   "img_size": 32, "preprocessing": baseline_preprocessing(32).to_dict()})
    return convlens.load_model(str(path.with_suffix(".safetensors")), device="cpu")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """22 noise images in class subfolders named like the model's classes, of varied sizes."""
    from PIL import Image

    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(3)
    for i in range(22):
        folder = root / ("cats", "dogs")[i % 2]
        folder.mkdir(exist_ok=True)
        size = (40 + i % 5 * 4, 36 + i % 3 * 6)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"im{i:02d}.png")
    return root

