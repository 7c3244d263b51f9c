"""Training: run folders that load as models, resume, bad data, duplicates, cross-validation, real learning."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from convlens import load_model
from convlens.data.check import check_data
from convlens.data.folders import ImageFolderDataset, Sample, read_split
from convlens.errors import ConvlensError
from convlens.models import BaselineCNN
from convlens.models.loading import baseline_preprocessing
from convlens.training import (
    DataWarning,
    Normalizer,
    TrainConfig,
    cross_validate,
    fit,
    resume,
    train,
    train_one_epoch,
)
from convlens.training.data import folds_for_cv

SMALL = dict(arch="baseline", img_size=32, batch_size=4, optimizer="sgd", lr=0.01, device="cpu")


def colour_folder(root: Path, per_class: int = 8, size: int = 40, seed: int = 0,
                  classes=("red", "green", "blue")) -> Path:
    """Noise images tinted by class: learnable, all distinct."""
    rng = np.random.default_rng(seed)
    for channel, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = rng.integers(0, 110, (size, size, 3))
            pixels[..., channel % 3] += 120
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index}.png")
    return root


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_run_folder_is_a_model_with_every_file(tmp_path):
    data = colour_folder(tmp_path / "data")
    result = train(data, tmp_path / "run", TrainConfig(epochs=2, snapshots=(0, 2), **SMALL))
    run = result.run_dir
    for name in ("best.safetensors", "best.json", "last.safetensors", "last.json", "last.optimizer.pt",
                 "metrics.json", "curves.png", "confusion.png", "split.json", "summary.json", "arrays.npz",
                 "snapshots/epoch_000.safetensors", "snapshots/epoch_002.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["final"] == metrics["epochs"][-1]
    assert set(metrics["epochs"][0]) >= {"train_loss", "train_accuracy", "val_loss", "val_accuracy"}
    meta = json.loads((run / "snapshots" / "epoch_002.json").read_text())
    assert meta["epoch"] == 2 and meta["architecture"] == "baseline" and meta["img_size"] == 32
    assert meta["class_names"] == ["blue", "green", "red"] and meta["training"]["epochs"] == 2
    # a made split: stratified, ceil(20 % of 24) = 5 images, every class on both sides, written for reuse
    classes, train_samples, validation_samples = read_split(run / "split.json")
    assert len(validation_samples) == 5 and len(train_samples) == 19
    assert {s.label for s in validation_samples} == set(classes)
    # the run folder, a snapshot and the checkpoint agree with the weights on disk
    model = load_model(run, device="cpu")
    assert model.class_names == classes and model.input_size == (32, 32)
    best_epoch = json.loads((run / "best.json").read_text())["epoch"]
    assert best_epoch == result.best_epoch
    snapshot = load_model(run / "snapshots" / f"epoch_{best_epoch:03d}.safetensors", device="cpu")
    images = [s.path for s in validation_samples]
    with torch.inference_mode():
        assert torch.equal(model.module(model.prepare(images)), snapshot.module(snapshot.prepare(images)))
    # the validation accuracy recorded is what the reloaded model gets on the validation images
    with torch.inference_mode():
        predicted = model.module(model.prepare(images)).argmax(1)
    labels = torch.tensor([classes.index(s.label) for s in validation_samples])
    assert (predicted == labels).float().mean().item() == pytest.approx(result.best.val_accuracy)


def test_epoch_loss_and_accuracy_are_the_plain_averages(tmp_path):
    """With lr 0 nothing changes, so the epoch's running figures must equal one independent pass."""
    data = colour_folder(tmp_path / "data", per_class=5)
    classes = ["blue", "green", "red"]
    samples = [Sample(p, p.parent.name) for p in sorted(data.rglob("*.png"))]
    preprocessing = baseline_preprocessing(32)
    dataset = ImageFolderDataset(samples, classes, preprocessing.geometry, (32, 32))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True)
    torch.manual_seed(0)
    module = BaselineCNN(3, 32)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.0)
    loss, accuracy = train_one_epoch(module, loader, optimizer, Normalizer(preprocessing, "cpu"))
    inputs = preprocessing.batch([Image.open(s.path).convert("RGB") for s in samples])
    targets = torch.tensor([classes.index(s.label) for s in samples])
    with torch.no_grad():
        logits = module(inputs)
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item(), rel=1e-5)
    assert accuracy == pytest.approx((logits.argmax(1) == targets).float().mean().item())


def test_normalizer_matches_preprocessing():
    from convlens.models.loading import load_model as load

    preprocessing = load("torchvision:resnet18", device="cpu").preprocessing
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    expected = preprocessing.normalize(pixels.float() / 255)
    assert torch.allclose(Normalizer(preprocessing, "cpu")(pixels), expected, atol=1e-6)


def test_resume_gives_the_weights_of_an_unbroken_run(tmp_path):
    data = colour_folder(tmp_path / "data")
    config = dict(SMALL, augment=True, momentum=0.9)
    straight = train(data, tmp_path / "straight", TrainConfig(epochs=3, **config))
    train(data, tmp_path / "resumed", TrainConfig(epochs=2, **config))
    with pytest.raises(ConvlensError, match="trained 2 epochs already"):
        resume(tmp_path / "resumed", epochs=2)
    resumed = resume(tmp_path / "resumed", epochs=3)
    assert [r.epoch for r in resumed.history] == [1, 2, 3]
    for name in ("last.safetensors", "best.safetensors"):
        a, b = weights_of(straight.run_dir / name), weights_of(resumed.run_dir / name)
        assert all(torch.equal(a[key], b[key]) for key in a), name
    assert [r.val_loss for r in resumed.history] == [r.val_loss for r in straight.history]


def test_torchvision_model_fine_tunes_from_a_local_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(1)
    start = torchvision.models.resnet18(num_classes=1000).state_dict()
    weights = tmp_path / "resnet18_start.pth"
    torch.save(start, weights)
    data = colour_folder(tmp_path / "data", per_class=6)
    config = TrainConfig(arch="torchvision:resnet18", weights=str(weights), img_size=64, epochs=2, batch_size=6,
                         optimizer="sgd", lr=0.05, freeze_backbone=True, unfreeze_after=1, snapshots=(1,),
                         device="cpu")
    result = train(data, tmp_path / "run", config)
    assert [r.phase for r in result.history] == ["frozen", "full"]
    assert [r.lr for r in result.history] == [pytest.approx(0.05), pytest.approx(0.005)]
    frozen = weights_of(result.run_dir / "snapshots" / "epoch_001.safetensors")
    last = weights_of(result.run_dir / "last.safetensors")
    backbone = [key for key in start if not key.startswith("fc.")]
    # epoch 1 trained the new 3-class head alone: the backbone (batch statistics too) is the file's
    assert all(torch.equal(frozen[key], start[key]) for key in backbone)
    assert frozen["fc.weight"].shape == (3, 512)
    # epoch 2 trained everything
    assert not torch.equal(last["layer1.0.conv1.weight"], start["layer1.0.conv1.weight"])
    # load_model(RUN_DIR) gives the logits of an independently rebuilt torchvision model with those weights
    model = load_model(result.run_dir, device="cpu")
    rebuilt = torchvision.models.resnet18(num_classes=3)
    rebuilt.load_state_dict(weights_of(result.run_dir / "best.safetensors"))
    rebuilt.eval()
    images = sorted(data.rglob("*.png"))[:5]
    inputs = model.prepare(images)
    assert inputs.shape == (5, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model.module(inputs), rebuilt(inputs))


def test_unreadable_files_are_skipped_with_one_warning(tmp_path):
    data = colour_folder(tmp_path / "data", per_class=5)
    (data / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    (data / "blue" / "empty.png").write_bytes(b"")
    (data / "green" / "readme.txt").write_text("ignored")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(data, tmp_path / "run", TrainConfig(epochs=1, **SMALL))
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(messages) == 1
    assert messages[0].startswith("skipped 2 unreadable image file(s)")
    assert "broken.jpg" in messages[0] and "empty.png" in messages[0]
    assert result.train_size + result.validation_size == 15
    _, train_samples, validation_samples = read_split(result.run_dir / "split.json")
    assert not {s.path.name for s in train_samples + validation_samples} & {"broken.jpg", "empty.png", "readme.txt"}


def test_too_few_classes_or_an_empty_class_stop_before_training(tmp_path):
    one = colour_folder(tmp_path / "one", classes=("red",))
    with pytest.raises(ConvlensError, match="needs at least two class folders with images, found 1"):
        train(one, tmp_path / "run1", TrainConfig(epochs=1, **SMALL))
    empty = colour_folder(tmp_path / "empty", classes=("red", "green"))
    (empty / "blue").mkdir()
    (empty / "blue" / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(ConvlensError, match="blue has no usable image"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(empty, tmp_path / "run2", TrainConfig(epochs=1, **SMALL))
    assert not (tmp_path / "run1").exists() and not (tmp_path / "run2").exists()


def leaky_split(root: Path) -> Path:
    """A given split whose validation holds 3 copies of training images (one re-encoded as JPEG)."""
    colour_folder(root / "train", per_class=6)
    colour_folder(root / "validation", per_class=3, seed=7)
    shutil.copy(root / "train" / "red" / "0.png", root / "validation" / "red" / "copy0.png")
    shutil.copy(root / "train" / "red" / "1.png", root / "validation" / "red" / "copy1.png")
    Image.open(root / "train" / "blue" / "2.png").save(root / "validation" / "blue" / "copy2.jpg", quality=90)
    return root


def test_leaky_validation_warns_loudly_and_dedupe_removes_the_copies(tmp_path):
    data = leaky_split(tmp_path / "data")
    with pytest.warns(DataWarning, match=r"LEAK: 2 of 12 validation images are identical to training images "
                                         r"and 1 more are near duplicates"):
        leaky = train(data, tmp_path / "leaky", TrainConfig(epochs=1, **SMALL))
    assert leaky.validation_size == 12
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clean = train(data, tmp_path / "clean", TrainConfig(epochs=1, dedupe=True, **SMALL))
    messages = [str(w.message) for w in caught]
    assert not any(m.startswith("LEAK") for m in messages)
    assert any("--dedupe: removed 3 validation images" in m for m in messages)
    _, _, validation = read_split(clean.run_dir / "split.json")
    assert sorted(s.path.name for s in validation if s.label in ("red", "blue")) == ["0.png", "0.png", "1.png",
                                                                                    "1.png", "2.png", "2.png"]


def test_cross_validation_keeps_duplicates_in_one_fold(tmp_path):
    data = leaky_split(tmp_path / "data")
    report = check_data(data)
    result = cross_validate(data, tmp_path / "cv", 3, TrainConfig(epochs=1, **SMALL))
    group_of = {info.path: int(report.group_ids[i]) for i, info in enumerate(report.images)}
    seen_validation = []
    for fold in result.folds:
        _, train_samples, validation_samples = read_split(fold.run_dir / "split.json")
        train_groups = {group_of[s.path] for s in train_samples}
        assert not train_groups & {group_of[s.path] for s in validation_samples}
        seen_validation += [s.path for s in validation_samples]
    assert sorted(seen_validation) == sorted(group_of)  # every image validated exactly once
    record = json.loads((tmp_path / "cv" / "cv.json").read_text())
    finals = [fold.final.val_accuracy for fold in result.folds]
    assert record["final_val_accuracy_mean"] == pytest.approx(np.mean(finals))
    assert record["final_val_accuracy_std"] == pytest.approx(np.std(finals))
    assert (tmp_path / "cv" / "cv.png").is_file()
    deduped, _ = folds_for_cv(report, 3, 0, dedupe=True)
    assert sum(len(s.validation) for s in deduped) == report.unique_count() == 30 - 2  # 2 identical copies


def test_cli_train_and_predict_on_the_run(tmp_path):
    from typer.testing import CliRunner

    from convlens.cli import app

    data = colour_folder(tmp_path / "data")
    run = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(data), "--out", str(run), "--epochs", "2", "--batch-size", "4",
                                 "--device", "cpu", "--snapshots", "1"])
    assert result.exit_code == 0, result.output
    assert "best validation accuracy" in result.output
    assert (run / "snapshots" / "epoch_001.safetensors").is_file()
    result = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "3"])
    assert result.exit_code == 0, result.output
    assert len(json.loads((run / "metrics.json").read_text())["epochs"]) == 3
    image = sorted(data.rglob("*.png"))[0]
    result = runner.invoke(app, ["predict", str(run), str(image), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    names = {p["name"] for p in json.loads(result.output)[0]["predictions"]}
    assert names == {"red", "green", "blue"}


def test_leaf_transfer_learning_learns_on_an_honest_split(shared_data, tmp_path):
    """EfficientNet-Lite0 (ImageNet weights), head only, one epoch at 96 px, on a de-duplicated group-aware
    fold of the leaf set: validation accuracy well above chance (1/3) and the majority class (about half)."""
    report = check_data(shared_data / "leaf")
    splits, _ = folds_for_cv(report, 5, 0, dedupe=True)
    config = TrainConfig(arch="efficientnet_lite0", img_size=96, epochs=1, batch_size=32, optimizer="adam",
                         lr=0.01, freeze_backbone=True, device="cpu")
    result = fit(tmp_path / "run", config, splits[0], report)
    assert result.train_size + result.validation_size == 557
    labels = [s.label for s in splits[0].validation]
    majority = max(labels.count(name) for name in set(labels)) / len(labels)
    assert result.final.val_accuracy > max(0.6, majority + 0.1)
    # the reloaded run agrees with the accuracy recorded during training (PIL path vs cached tensors)
    model = load_model(result.run_dir, device="cpu")
    with torch.inference_mode():
        predicted = model.module(model.prepare([s.path for s in splits[0].validation])).argmax(1)
    labels = torch.tensor([model.class_names.index(s.label) for s in splits[0].validation])
    assert (predicted == labels).float().mean().item() == pytest.approx(result.final.val_accuracy, abs=1e-6)
