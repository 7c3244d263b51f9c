from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from convlens.errors import ConvlensError
from convlens.output import output_dir


def test_folder_appears_only_on_success(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(ValueError, match="half way"):
        with output_dir(target, "test") as out:
            out.add_arrays(input=torch.zeros(1, 3, 4, 4))
            out.file("partial.png").write_bytes(b"x")
            raise ValueError("half way")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left either


def test_written_folder_has_arrays_and_summary(tmp_path):
    target = tmp_path / "out"
    with output_dir(target, "test") as out:
        with out.timed():
            values = torch.arange(6.0).view(2, 3)
        out.add_arrays(input=torch.ones(1, 3, 2, 2), values=values)
        out.update(model={"spec": "x"}, layer="conv1")
    arrays = np.load(target / "arrays.npz")
    assert arrays["input"].dtype == np.float32 and arrays["input"].shape == (1, 3, 2, 2)
    assert np.array_equal(arrays["values"], np.arange(6.0).reshape(2, 3))
    summary = json.loads((target / "summary.json").read_text())
    assert summary["command"] == "test" and summary["layer"] == "conv1"
    assert summary["compute_seconds"] >= 0 and "torch" in summary["versions"]


def test_earlier_output_is_replaced_but_user_folders_are_not(tmp_path):
    target = tmp_path / "out"
    for value in (1.0, 2.0):
        with output_dir(target, "test") as out:
            out.add_arrays(input=torch.full((1,), value))
    assert np.load(target / "arrays.npz")["input"][0] == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(ConvlensError, match="not a convlens output folder"):
        output_dir(mine, "test").__enter__()
    assert (mine / "holiday.jpg").read_bytes() == b"precious"
