"""Issue 13: never lose a user's files (safe --out), the thin-image bomb, validated options, one-line messages.

Every data-loss case uses real files that must survive. The CLI runs in process (``convlens.cli.main``) where it
can; Ctrl-C and SIGTERM run as real subprocesses.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from testkit import make_image
from testkit import run_cli as run

from convlens.errors import ConvlensError
from convlens.output import MANIFEST, output_dir

SRC = Path(__file__).resolve().parents[1] / "src"



def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for folders): the file system as the user sees it."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def image(tmp_path) -> Path:
    return make_image(tmp_path / "img.png", size=(40, 36))


@pytest.fixture
def checkpoint(tmp_path_factory) -> Path:
    """A baseline:32 convlens checkpoint (weights from a checkpoint: no random-weights warning)."""
    from convlens.models import BaselineCNN, baseline_preprocessing, save_checkpoint

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(folder / "model", BaselineCNN(3, 32),
                    {"architecture": "baseline", "class_names": ["a", "b", "c"], "img_size": 32,
                     "preprocessing": baseline_preprocessing(32).to_dict()})
    return folder / "model.safetensors"


def fake_run(folder: Path) -> Path:
    """A training run folder as ``convlens train`` leaves it (the files that make a run)."""
    folder.mkdir(parents=True)
    for name, data in (("best.safetensors", b"weights"), ("last.safetensors", b"weights"),
                       ("metrics.json", b"{}"), ("split.json", b"{}"),
                       ("summary.json", json.dumps({"command": "train"}).encode())):
        (folder / name).write_bytes(data)
    return folder


# -- 1. demo --out ---------------------------------------------------------------------------------------------
def test_demo_never_deletes_a_users_folder(tmp_path, capsys):
    thesis = tmp_path / "d" / "thesis.tex"
    thesis.parent.mkdir()
    thesis.write_text("x")
    before = tree(tmp_path)
    code, _, err = run(["demo", "--out", tmp_path / "d"], capsys)
    assert code == 2 and "--force" in one_error_line(err)
    assert tree(tmp_path) == before


def test_demo_refuses_the_current_folder_even_with_force(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("keep")
    for out in (".", ""):
        code, _, err = run(["demo", "--out", out, "--force"], capsys)
        assert code == 2 and "current folder" in one_error_line(err)
    assert (tmp_path / "notes.txt").read_text() == "keep"


def test_demo_replaces_its_own_output_and_restores_it_on_failure(tmp_path, monkeypatch):
    import convlens.demo as demo

    out = tmp_path / "demo"
    monkeypatch.setattr(demo, "build_reports", lambda *args: [])  # the folder rules, not the reports, on trial
    demo.run_demo(out, "baseline:32", log=lambda _: None)
    assert (out / "index.html").is_file() and json.loads((out / MANIFEST).read_text())["complete"]
    first = tree(out)

    def broken(*args):
        raise RuntimeError("a report failed")

    monkeypatch.setattr(demo, "build_reports", broken)
    with pytest.raises(RuntimeError):
        demo.run_demo(out, "baseline:32", log=lambda _: None)
    assert tree(out) == first  # the earlier demo is back, nothing half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
    monkeypatch.setattr(demo, "build_reports", lambda *args: [])
    demo.run_demo(out, "baseline:32", log=lambda _: None)  # its own output: replaced without --force
    assert (out / "index.html").is_file()


# -- 2. a summary.json is not a licence to delete ---------------------------------------------------------------
def test_folder_with_a_summary_and_other_files_survives(tmp_path, image, checkpoint, capsys):
    user = tmp_path / "u"
    user.mkdir()
    (user / "precious.txt").write_text("x")
    (user / "summary.json").write_text("{}")
    before = tree(tmp_path)
    for command in (["predict", checkpoint, image], ["cam", checkpoint, image], ["filters", checkpoint]):
        code, _, err = run([*command, "--out", user], capsys)
        assert code == 2 and "--force" in one_error_line(err), command
        assert tree(tmp_path) == before
    code, _, err = run(["predict", checkpoint, image, "--out", user, "--force"], capsys)  # asked for: replaced
    assert code == 0, err
    assert not (user / "precious.txt").exists() and (user / MANIFEST).is_file()


def test_run_folder_is_never_replaced_by_a_computing_command(tmp_path, image, checkpoint, capsys):
    run_dir = fake_run(tmp_path / "run")
    before = tree(tmp_path)
    for extra in ([], ["--force"]):
        code, _, err = run(["predict", checkpoint, image, "--out", run_dir, *extra], capsys)
        assert code == 2 and "training run" in one_error_line(err)
    assert tree(tmp_path) == before


def test_a_converted_model_folder_is_replaced_only_by_convert(tmp_path, image, checkpoint, capsys):
    model_dir = tmp_path / "converted"
    assert run(["convert", checkpoint, "--out", model_dir], capsys)[0] == 0
    before = tree(tmp_path)
    for extra in ([], ["--force"]):
        code, _, err = run(["predict", model_dir, image, "--out", model_dir, *extra], capsys)
        assert code == 2 and "a model of its own" in one_error_line(err)
    assert tree(tmp_path) == before
    assert run(["convert", checkpoint, "--out", model_dir], capsys)[0] == 0  # its own command may


def test_train_refuses_an_earlier_run_or_foreign_files_without_force(tmp_path, capsys):
    from convlens.training.run import fresh_run_dir

    run_dir = fake_run(tmp_path / "run")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "photo.jpg").write_bytes(b"keep")
    before = tree(tmp_path)
    for folder in (run_dir, mine):
        with pytest.raises(ConvlensError, match="--force"):
            fresh_run_dir(folder)
        code, _, err = run(["train", tmp_path / "data", "--out", folder], capsys)
        assert code == 2 and "--force" in one_error_line(err)
    assert tree(tmp_path) == before
    assert fresh_run_dir(run_dir, force=True) == run_dir and list(run_dir.iterdir()) == []


def test_only_a_manifest_folder_with_nothing_foreign_is_replaced(tmp_path):
    out = tmp_path / "out"
    with output_dir(out, "test") as folder:
        folder.add_arrays(input=torch.zeros(1, 3, 2, 2))
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["command"] == "test" and set(manifest["files"]) == {"arrays.npz", "summary.json"}
    (out / "notes.txt").write_text("mine")  # a file the user added to an output folder
    with pytest.raises(ConvlensError, match="notes.txt, which convlens did not write"):
        output_dir(out, "test").__enter__()
    (out / "notes.txt").unlink()
    (out / "summary.json").write_text("{}")  # changed since convlens wrote it
    with pytest.raises(ConvlensError, match="summary.json"):
        output_dir(out, "test").__enter__()
    legacy = tmp_path / "legacy"  # an output of an older convlens: no manifest
    legacy.mkdir()
    (legacy / "summary.json").write_text('{"command": "cam"}')
    with pytest.raises(ConvlensError, match="not a convlens output folder; choose another --out or pass --force"):
        output_dir(legacy, "test").__enter__()
    assert (legacy / "summary.json").is_file()


# -- 3. the thin image ------------------------------------------------------------------------------------------
def test_thin_image_is_refused_after_resizing_naming_the_file(tmp_path, capsys):
    thin = tmp_path / "thin.png"
    Image.new("RGB", (100_000, 3), (120, 30, 200)).save(thin)
    assert thin.stat().st_size < 10_000
    started = time.perf_counter()
    code, _, err = run(["predict", "torchvision:resnet18", thin, "--device", "cpu"], capsys)
    line = [entry for entry in err.splitlines() if entry.startswith("error")]
    assert code == 2 and len(line) == 1 and str(thin) in line[0] and "megapixels" in line[0]
    assert time.perf_counter() - started < 60


def test_resize_guard_in_the_library(tmp_path):
    from convlens.models.preprocessing import Preprocessing

    thin = Image.new("RGB", (3, 200_000))
    with pytest.raises(ConvlensError, match="megapixels once its shorter side is resized to 256"):
        Preprocessing().geometry(thin)
    wide_but_fine = Image.new("RGB", (2000, 100))  # 5120 x 256 after resizing: allowed
    assert Preprocessing().geometry(wide_but_fine).size == (224, 224)


# -- 4. concurrent and interrupted writes, symlinks -------------------------------------------------------------
def _commit_many(out: str, worker: int, count: int, errors) -> None:
    for n in range(count):
        try:
            with output_dir(out, "test") as folder:
                folder.add_arrays(input=np.full((1, 8), worker * 1000 + n, np.float32))
                folder.file("extra.txt").write_text(str(worker))
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            errors.put(f"{type(exc).__name__}: {exc}")


def test_concurrent_writers_each_commit_whole(tmp_path):
    out = tmp_path / "o"
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    workers = [context.Process(target=_commit_many, args=(str(out), w, 25, errors)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert failures == [] and all(w.exitcode == 0 for w in workers)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no .o.*.tmp or .o.*.old left
    value = int(np.load(out / "arrays.npz")["input"][0, 0])
    assert (out / "extra.txt").read_text() == str(value // 1000)  # one writer's folder, whole
    assert json.loads((out / MANIFEST).read_text())["files"]["extra.txt"] == 1


def test_leftovers_of_a_killed_writer_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / f".o.{dead.pid}.deadbeef.tmp"
    leftover.mkdir()
    (leftover / "half.png").write_bytes(b"x")
    mine = tmp_path / f".o.{os.getpid()}.cafebabe.tmp"  # a live writer's (this process): kept
    mine.mkdir()
    with output_dir(tmp_path / "o", "test") as folder:
        folder.add_arrays(input=torch.zeros(1))
    assert not leftover.exists() and mine.exists()


SIGTERM_SCRIPT = """
import os, signal, sys, time
from convlens import output
def slow_commit(self):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
output.OutputDir.commit = slow_commit
from convlens.cli import main
main(sys.argv[1:])
"""


def test_sigterm_cleans_up_like_ctrl_c(tmp_path, checkpoint, image):
    out = tmp_path / "parent" / "o"
    result = subprocess.run([sys.executable, "-c", SIGTERM_SCRIPT, "predict", str(checkpoint), str(image),
                             "--out", str(out)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(SRC)})
    assert result.returncode == 143 and result.stderr.strip().splitlines()[-1] == "terminated", result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [image.name]  # no .o.*.tmp, no parent folder


def _wait_for_handlers(pid: int, timeout: float = 30.0) -> None:
    """Until the process catches SIGTERM (``main`` installs that handler first; Python's own startup cannot be
    interrupted cleanly by anyone)."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        pytest.skip("needs /proc to see when the handlers are installed")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        caught = next(line for line in status.read_text().splitlines() if line.startswith("SigCgt:"))
        if int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.002)
    raise AssertionError("convlens.cli.main never installed its signal handlers")


def test_ctrl_c_during_the_imports_is_one_line(tmp_path):
    code = "import convlens.cli, sys; print('torch' in sys.modules)"
    light = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(SRC)})
    assert light.stdout.strip() == "False"  # the entry point imports nothing heavy before main() runs
    for delay in (0.0, 0.5):
        process = subprocess.Popen([sys.executable, "-m", "convlens.cli", "layers", "baseline"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "PYTHONPATH": str(SRC)})
        _wait_for_handlers(process.pid)  # main() has started: the heavy imports are just beginning
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 130 and err.strip() == "interrupted", err


def test_symlinked_out_writes_the_folder_it_points_to(tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    for value in (1.0, 2.0):
        with output_dir(link, "test") as folder:
            folder.add_arrays(input=torch.full((1,), value))
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert np.load(target / "arrays.npz")["input"][0] == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConvlensError, match="symbolic link"):
        output_dir(dangling, "test").__enter__()
    assert dangling.is_symlink()


# -- 6. numeric options and model specs --------------------------------------------------------------------------
@pytest.mark.parametrize("spec, message", [
    ("baseline:4", "IMG_SIZE 4 is not in the range 8<=x<=512"),
    ("baseline:100000", "IMG_SIZE 100000 is not in the range"),
    ("baseline:32:0", "NUM_CLASSES 0 is not in the range 2<=x<=100000"),
    ("baseline:32:3:9", "expected baseline"),
])
def test_model_specs_are_checked(spec, message):
    import convlens

    with pytest.raises(ConvlensError, match=message):
        convlens.load_model(spec)


def test_devices_are_checked():
    import convlens

    with pytest.raises(ConvlensError, match="--device 'tpu': use auto, cpu, cuda, cuda:N or mps"):
        convlens.load_model("baseline", device="tpu")


def test_library_rejects_out_of_range_counts(image):
    import convlens

    model = convlens.load_model("baseline:32", device="cpu")
    for kwargs in ({"top": 0}, {"top": -1}, {"batch_size": 0}):
        with pytest.raises(ConvlensError, match="is not in the range"):
            convlens.predict(model, [image], **kwargs)


def test_top_larger_than_the_classes_gives_the_classes(image, checkpoint, capsys):
    code, out, err = run(["predict", checkpoint, image, "--top", "50"], capsys)
    assert code == 0 and out.count("%") == 3, err


# -- 7. messages ------------------------------------------------------------------------------------------------
def test_unloadable_weights_get_convlens_own_line(tmp_path, image, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"weight": Evil()}, evil)
    code, out, err = run(["predict", "baseline", image, "--weights", evil], capsys)
    line = one_error_line([e for e in err.splitlines() if not e.startswith("warning")][0])
    assert code == 2 and "pwned" not in out and "weights_only=False" not in err and "\x1b" not in err
    assert "never unpickles" in line


def test_weights_file_without_a_known_suffix_is_read_as_a_file(tmp_path, image):
    import convlens

    model = convlens.load_model("torchvision:resnet18")
    path = tmp_path / "resnet18.weights"
    torch.save(model.module.state_dict(), path)
    loaded = convlens.load_model("torchvision:resnet18", weights=path)
    assert loaded.weights == f"file:{path}" and model.weights == "random"
    with pytest.raises(ConvlensError, match="no such file, and not one of ResNet18_Weights"):
        convlens.load_model("torchvision:resnet18", weights=tmp_path / "missing.weights")


def test_folder_given_as_an_image(tmp_path, checkpoint, capsys):
    (tmp_path / "folder").mkdir()
    code, _, err = run(["occlusion", checkpoint, tmp_path / "folder", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "is a folder, not an image file" in one_error_line(err)


def test_resume_with_a_bad_optimizer_state(tmp_path):
    from convlens.training.run import _optimizer_state

    bad = tmp_path / "last.optimizer.pt"
    bad.write_bytes(b"\x80\x04 not a pickle at all")
    with pytest.raises(ConvlensError, match="unreadable optimizer state .* cannot be resumed"):
        _optimizer_state(bad, "cpu")


def test_out_that_cannot_be_created(tmp_path, image, checkpoint, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code, _, err = run(["predict", checkpoint, image, "--out", blocker / "sub" / "o"], capsys)
    assert code == 2 and "cannot create" in one_error_line(err)
    code, _, err = run(["predict", checkpoint, image, "--out", blocker], capsys)
    assert code == 2 and "is a file" in one_error_line(err)
    assert blocker.read_text() == "x"


# -- 8. meaningless results -------------------------------------------------------------------------------------
def test_nan_weights_are_refused(tmp_path, image, capsys):
    from convlens.models import BaselineCNN

    module = BaselineCNN(3, 32)
    with torch.no_grad():
        module.fc2.weight[0, 0] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(module.state_dict(), path)
    code, _, err = run(["predict", "baseline", image, "--weights", path], capsys)
    assert code == 2 and "NaN or infinite values (e.g. fc2.weight)" in err and "nan%" not in err


# -- 9. unreadable files in a folder ------------------------------------------------------------------------------
def test_folder_predict_skips_and_reports_unreadable_images(tmp_path, checkpoint, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    make_image(folder / "a.png", seed=1)
    (folder / "b.jpg").write_bytes(b"\xff\xd8\xff broken")
    make_image(folder / "c.png", seed=2)
    code, out, err = run(["predict", checkpoint, folder, "--out", tmp_path / "o"], capsys)
    assert code == 0 and "a.png" in out and "c.png" in out and "b.jpg" not in out
    assert err.count("warning:") == 1 and "skipped 1 unreadable image" in err and "b.jpg" in err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert [entry["image"] for entry in summary["unreadable_images_skipped"]] == [str(folder / "b.jpg")]
    assert np.load(tmp_path / "o" / "arrays.npz")["input"].shape[0] == 2
    code, _, err = run(["predict", checkpoint, folder, "--strict"], capsys)
    assert code == 2 and "b.jpg" in one_error_line(err)
    code, _, err = run(["predict", checkpoint, folder / "b.jpg"], capsys)  # named on the command line: an error
    assert code == 2 and "b.jpg" in one_error_line(err)


def test_topk_skips_and_reports_unreadable_images(tmp_path, checkpoint, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in range(3):
        make_image(folder / f"good{seed}.png", seed=seed)
    (folder / "bad.png").write_bytes(b"\x89PNG broken")
    args = ["topk", checkpoint, folder, "--layer", "conv2", "--units", "0:2", "--k", "2"]
    code, _, err = run([*args, "--out", tmp_path / "o"], capsys)
    assert code == 0 and err.count("warning:") == 1 and "bad.png" in err, err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert [entry["image"] for entry in summary["unreadable_images_skipped"]] == [str(folder / "bad.png")]
    assert summary["images_scanned"] == 4 and all(len(unit["top"]) == 2 for unit in summary["top"])
    code, _, err = run([*args, "--out", tmp_path / "o2", "--strict"], capsys)
    assert code == 2 and "bad.png" in one_error_line(err) and not (tmp_path / "o2").exists()


def test_occlusion_refuses_a_layer_without_maps(tmp_path, image, checkpoint, capsys):
    code, _, err = run(["occlusion", checkpoint, image, "--layer", "fc1", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "output shape (512,)" in one_error_line(err) and not (tmp_path / "o").exists()


def test_cam_refuses_a_1x1_layer(tmp_path, image):
    import convlens
    from convlens.models import BaselineCNN

    model = convlens.load_model("baseline:8", device="cpu")
    assert isinstance(model.module, BaselineCNN)  # pool3 is 1x1 at 8 px: a CAM there is one flat colour
    for method in ("gradcam", "scorecam"):
        with pytest.raises(ConvlensError, match="1x1 map at this input size"):
            convlens.cam(model, image, method=method, layer="pool3")
    assert convlens.cam(model, image, method="gradcam", layer="conv3").arrays()["cam"].shape == (1, 8, 8)


# -- 10. housekeeping -------------------------------------------------------------------------------------------
def test_folders_get_normal_permissions_and_failed_runs_leave_no_parents(tmp_path):
    previous = os.umask(0o022)
    try:
        with output_dir(tmp_path / "o", "test") as folder:
            folder.add_arrays(input=torch.zeros(1))
    finally:
        os.umask(previous)
    assert (tmp_path / "o").stat().st_mode & 0o777 == 0o755
    with pytest.raises(ValueError):
        with output_dir(tmp_path / "a" / "b" / "c", "test"):
            raise ValueError("failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]
