"""Every command through a table of bad options and bad files: exit 2, exactly one line on stderr starting with
``error:``, no traceback, and the file system exactly as before (nothing written, nothing deleted).

The model is a local baseline:32 convlens checkpoint (trained-like: no random-weights warning line), the images
are tiny; the whole table runs in process."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from testkit import make_image

from convlens.cli import main


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """The workspace every case runs in (also the current folder), with good and bad inputs."""
    from convlens.models import BaselineCNN, Preprocessing, baseline_preprocessing, save_checkpoint

    root = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    meta = {"architecture": "baseline", "class_names": ["a", "b", "c"], "img_size": 32}
    save_checkpoint(root / "model", BaselineCNN(3, 32), {**meta, "preprocessing": baseline_preprocessing(32).to_dict()})
    # the same network fed the torchvision way (resize the shorter side, crop): the thin image blows up there
    resize = Preprocessing(crop=(32, 32), resize=36)
    save_checkpoint(root / "resizing", BaselineCNN(3, 32), {**meta, "preprocessing": resize.to_dict()})
    make_image(root / "img.png", size=(40, 36))
    (root / "photos" / "a").mkdir(parents=True)
    make_image(root / "photos" / "a" / "one.png", seed=1)
    make_image(root / "photos" / "a" / "two.png", seed=2)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (root / "empty.png").write_bytes(b"")
    Image.new("RGB", (300_000, 1)).save(root / "thin.png")
    (root / "user").mkdir()
    (root / "user" / "thesis.tex").write_text("years of work")
    (root / "user" / "summary.json").write_text("{}")
    run = root / "run"
    run.mkdir()
    for name in ("best.safetensors", "last.safetensors", "metrics.json", "split.json"):
        (run / name).write_bytes(b"x")
    (run / "summary.json").write_text(json.dumps({"command": "train"}))
    (root / "afile.txt").write_text("x")
    (root / "garbage.pth").write_bytes(b"\x00\x01garbage")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": Evil()}, root / "evil.pth")
    (root / "noimages").mkdir()
    return root


def tree(root):
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


MODEL, IMAGE, FOLDER = "model.safetensors", "img.png", "photos"
OUT = ["--out", "new_out"]
# Bad values for the options every model command shares, and bad --out folders for every computing command.
MODEL_CASES = [
    ("spec too small", ["baseline:4"]),
    ("spec too large", ["baseline:100000"]),
    ("zero classes", ["baseline:32:0"]),
    ("unknown spec", ["nonsense"]),
    ("unknown device", [MODEL, "--device", "tpu"]),
    ("pickled weights", ["baseline", "--weights", "evil.pth"]),
    ("garbage weights", ["baseline", "--weights", "garbage.pth"]),
    ("missing weights", ["torchvision:resnet18", "--weights", "nowhere.pth"]),
]
OUT_CASES = [
    ("user folder", ["--out", "user"]),
    ("run folder", ["--out", "run"]),
    ("run folder forced", ["--out", "run", "--force"]),
    ("a file", ["--out", "afile.txt"]),
    ("current folder", ["--out", "."]),
    ("current folder forced", ["--out", ".", "--force"]),
]
IMAGE_CASES = [("missing image", "nothere.png"), ("corrupt image", "broken.jpg"), ("empty file", "empty.png"),
               ("folder as image", "photos")]

# command -> (arguments before the model's, arguments after it, its numeric cases, takes an image)
COMMANDS = {
    "predict": ([], [IMAGE], [["--top", "0"], ["--top", "-1"], ["--top", "100000"], ["--batch-size", "0"],
                          ["--batch-size", "-1"]]),
    "layers": ([], [], []),
    "filters": ([], OUT, [["--max", "0"], ["--max-channels", "0"]]),
    "featuremaps": ([], [IMAGE, *OUT], [["--max", "-1"], ["--per-row", "0"]]),
    "featureviz": ([], ["--layer", "conv2", *OUT], [["--steps", "0"], ["--seed", "-1"], ["--diversity", "0"],
                                                    ["--size", "4"], ["--batch-size", "0"]]),
    "deconv": ([], [IMAGE, "--layer", "conv2", *OUT], [["--top", "0"], ["--top", "-1"], ["--unit", "-1"],
                                                     ["--unit", "64"]]),
    "topk": ([], [FOLDER, "--layer", "conv2", *OUT], [["--units", "0:8:0"], ["--k", "0"], ["--batch-size", "0"],
                                                  ["--workers", "-1"]]),
    "occlusion": ([], [IMAGE, *OUT], [["--size", "0"], ["--stride", "0"], ["--batch-size", "0"], ["--size", "-4"]]),
    "invariance": ([], [IMAGE, *OUT], [["--points", "0"], ["--batch-size", "0"]]),
    "cam": ([], [IMAGE, *OUT], [["--batch-size", "0"], ["--limit", "-1"]]),
}
IMAGE_COMMANDS = {"predict": [], "featuremaps": OUT, "deconv": ["--layer", "conv2", *OUT], "occlusion": OUT,
                  "invariance": OUT, "cam": OUT}


def cases():
    table = []
    for command, (before, after, numeric) in COMMANDS.items():
        for name, model_args in MODEL_CASES:
            if command == "layers" and "weights" not in name and "spec" not in name and "device" not in name:
                continue
            table.append((f"{command}: {name}", [command, *before, *model_args, *after]))
        for values in numeric:
            table.append((f"{command}: {' '.join(values)}", [command, *before, MODEL, *after, *values]))
        if command != "layers":
            plain = [a for a in after if a not in OUT] if "--out" in after else after
            for name, out_args in OUT_CASES:
                table.append((f"{command}: --out {name}", [command, *before, MODEL, *plain, *out_args]))
    for command, rest in IMAGE_COMMANDS.items():
        for name, image in IMAGE_CASES:
            if command in ("predict", "cam", "invariance", "featuremaps") and image == "photos":
                continue  # these take folders
            table.append((f"{command}: {name}", [command, MODEL, image, *rest]))
        table.append((f"{command}: thin image", [command, "resizing.safetensors", "thin.png", *rest]))
    table += [
        ("occlusion: linear layer", ["occlusion", MODEL, IMAGE, "--layer", "fc1", *OUT]),
        ("topk: folder without images", ["topk", MODEL, "noimages", "--layer", "conv2", *OUT]),
        ("topk: unknown layer", ["topk", MODEL, FOLDER, "--layer", "nope", *OUT]),
        ("evolution: not a run", ["evolution", "user", IMAGE, "--layer", "conv2", *OUT]),
        ("evolution: units step 0", ["evolution", "run", IMAGE, "--layer", "conv2", "--units", "0:8:0", *OUT]),
        ("data check: missing folder", ["data", "check", "nowhere"]),
        ("data check: near distance", ["data", "check", FOLDER, "--near-distance", "-1"]),
        ("data check: --out user folder", ["data", "check", FOLDER, "--out", "user"]),
        ("demo: user folder", ["demo", "--out", "user"]),
        ("demo: run folder forced", ["demo", "--out", "run", "--force"]),
        ("demo: current folder", ["demo", "--out", "."]),
        ("convert: user folder", ["convert", MODEL, "--out", "user"]),
        ("convert: run folder forced", ["convert", MODEL, "--out", "run", "--force"]),
        ("convert: unknown spec", ["convert", "baseline:4", "--out", "new_model"]),
        ("convert: pickled weights", ["convert", "baseline", "--weights", "evil.pth", "--out", "new_model"]),
        ("unknown command", ["frobnicate"]),
        ("unknown option", ["predict", MODEL, IMAGE, "--frobnicate"]),
        ("not a number", ["predict", MODEL, IMAGE, "--top", "many"]),
    ]
    for values in (["--epochs", "0"], ["--batch-size", "0"], ["--lr", "0"], ["--lr", "-1"], ["--val-split", "1.5"],
                   ["--momentum", "2"], ["--cv", "1"], ["--img-size", "4"], ["--workers", "-1"],
                   ["--near-distance", "100"], ["--weight-decay", "-1"], ["--finetune-lr", "0"]):
        table.append((f"train: {' '.join(values)}", ["train", FOLDER, "--out", "new_run", *values]))
    table += [
        ("train: --out user folder", ["train", FOLDER, "--out", "user"]),
        ("train: --out run folder", ["train", FOLDER, "--out", "run"]),
        ("train: --out current folder", ["train", FOLDER, "--out", ".", "--force"]),
        ("train: resume a user folder", ["train", "--resume", "user"]),
        ("train: bad arch", ["train", FOLDER, "--out", "new_run", "--arch", "nonsense"]),
    ]
    return table


CASES = cases()


@pytest.mark.parametrize("args", [args for _, args in CASES], ids=[name for name, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(space, args, capsys, monkeypatch):
    monkeypatch.chdir(space)
    before = tree(space)
    with pytest.raises(SystemExit) as info:
        main(list(args))
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert info.value.code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err and "pwned" not in captured.out + captured.err
    assert tree(space) == before
