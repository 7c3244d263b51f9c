"""Keras 3 on the torch backend (a test dependency only) builds the reference models."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def keras():
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("these tests need KERAS_BACKEND=torch")
    return keras
