"""Without the extra, ``--ray`` says in one line which extra to install; in-process needs no Ray at all."""

from __future__ import annotations

import sys

import pytest

from convlens.distributed import INSTALL_HINT, RayOptions, connect
from convlens.errors import ConvlensError


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without the package looks like
    with pytest.raises(ConvlensError) as error:
        connect(RayOptions("local"))
    assert str(error.value) == INSTALL_HINT and "convlens[ray]" in INSTALL_HINT and "\n" not in INSTALL_HINT


@pytest.mark.parametrize("command", ["cam", "occlusion", "faithfulness", "report"])
def test_cli_without_ray_is_one_line(monkeypatch, tmp_path, capsys, command):
    from convlens.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(SystemExit) as exit_code:
        main([command, "baseline", str(tmp_path), "--out", str(tmp_path / "out"), "--ray", "local",
              "--device", "cpu"])
    assert exit_code.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {INSTALL_HINT}"


def test_workers_must_be_positive():
    with pytest.raises(ConvlensError, match="--workers"):
        RayOptions("local", workers=0)


def test_a_users_folder_at_out_fails_before_any_work(tmp_path, checkpoint_model, image_folder):
    from convlens.distributed import cam_on_ray

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConvlensError, match="not a convlens output folder"):
        cam_on_ray(checkpoint_model, [image_folder], out)
    assert (out / "notes.txt").read_text() == "keep me" and not (tmp_path / "mine.partial").exists()
