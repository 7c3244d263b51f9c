"""Fixtures shared by the report tests."""

from __future__ import annotations

import pytest
import torch

import convlens


@pytest.fixture(scope="module")
def tiny_model():
    """The random-init baseline at 32 px, seeded: small enough for a whole report in seconds."""
    torch.manual_seed(0)
    return convlens.load_model("baseline:32", device="cpu")
