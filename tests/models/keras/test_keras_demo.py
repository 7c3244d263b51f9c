"""The demo section of the converted leaf Keras model: figures when the leaf data is here, a clean skip when not."""

from __future__ import annotations

import pytest
from convlens.demo.core import DemoContext

from convlens.demo import keras as keras_demo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_section_skips_cleanly_without_the_data(monkeypatch, tmp_path):
    monkeypatch.setattr(keras_demo, "shared_data", lambda: None)
    section = keras_demo.section(DemoContext(None, [], tmp_path, False))
    assert section.figures == [] and section.text.startswith("Skipped") and not any(tmp_path.iterdir())


@pytest.mark.slow
def test_section_draws_the_leaf_model(shared_data, monkeypatch, tmp_path):
    monkeypatch.setattr(keras_demo, "shared_data", lambda: shared_data)
    model = keras_demo.load_leaf_keras(shared_data, device="cpu")
    section = keras_demo.section(DemoContext(model, [], tmp_path, False))
    assert len(section.figures) == 6 and all((tmp_path / figure).is_file() for figure in section.figures)
    assert {"keras-leaf/gradcam.png", "keras-leaf/top9/topk.png", "keras-leaf/occlusion/occlusion.png"} <= set(
        section.figures)
