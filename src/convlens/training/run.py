"""``train``: an image folder in, a run directory out; ``resume`` continues one.

A run directory is a model spec for every command (``load_model(RUN_DIR)`` takes ``best``):
``best.safetensors/.json`` (best validation accuracy), ``last.safetensors/.json`` with
``last.optimizer.pt`` (optimizer state for ``resume``), ``snapshots/epoch_NNN.safetensors/.json`` (asked-for
epochs; 0 is the starting weights), ``split.json`` (the images on each side, reusable with ``split_file``),
``metrics.json`` (per-epoch and final loss and accuracy), ``curves.png``, ``confusion.png`` (validation set,
best checkpoint), ``summary.json`` and ``arrays.npz``. Checkpoints and metrics are written after every epoch,
so an interrupted run keeps what it finished and resumes from there.

Every epoch draws its shuffling and augmentation from ``seed`` and the epoch number alone, so a resumed run
gives the same weights as one that never stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from convlens.data.check import DataReport, check_data
from convlens.data.folders import ImageFolderDataset, keras_augmentation, read_split, write_split
from convlens.errors import ConvlensError
from convlens.models import zoo
from convlens.models.checkpoint import read_metadata, save_checkpoint
from convlens.models.loading import build_architecture, resolve_device
from convlens.models.preprocessing import Preprocessing
from convlens.output import library_versions
from convlens.training import plots
from convlens.training.config import TrainConfig
from convlens.training.data import Split, split_for_training, validation_leaks
from convlens.training.loop import EpochRecord, Normalizer, TrainingEvents, evaluate, train_one_epoch
from convlens.training.model import TrainableModel, build_model, head_parameters, set_backbone_trainable

OPTIMIZER_STATE = "last.optimizer.pt"
INPUT_EXAMPLES = 32  # validation inputs recorded in arrays.npz
EVAL_BATCH = 64


@dataclass
class TrainResult:
    run_dir: Path
    class_names: list[str]
    history: list[EpochRecord]
    best_epoch: int
    train_size: int
    validation_size: int
    wall_seconds: float
    img_size: int  # the input side the model was trained at

    @property
    def best(self) -> EpochRecord:
        return next(r for r in self.history if r.epoch == self.best_epoch)

    @property
    def final(self) -> EpochRecord:
        return self.history[-1]


def train(data_dir: str | Path, out: str | Path, config: TrainConfig | None = None, *,
          split_file: str | Path | None = None, report: DataReport | None = None,
          events: TrainingEvents | None = None, force: bool = False) -> TrainResult:
    """Check ``data_dir`` (see ``convlens.data.check``), split it, train, and write the run to ``out``
    (an earlier run or a folder of other files there only with ``force``)."""
    from convlens.output import check_out

    config = (config or TrainConfig()).validate()
    check_out(out, force=force, run=True)  # before the data check, which can take minutes
    events = events or TrainingEvents()
    if report is None:
        report = check_data(data_dir, config.near_distance,
                            progress=lambda items, total: events.track(items, total, "checking images"))
    split, messages = split_for_training(report, config.val_split, config.seed, config.dedupe, split_file)
    for message in messages:
        events.warning(message)
    return fit(out, config, split, report, events, force)


def fit(out: str | Path, config: TrainConfig, split: Split, report: DataReport,
        events: TrainingEvents | None = None, force: bool = False) -> TrainResult:
    """Train on an explicit split (``train`` and cross-validation folds end here)."""
    events = events or TrainingEvents()
    torch.manual_seed(config.seed)  # the new head (or the whole baseline) starts from the seed
    model = build_model(config, len(split.class_names))
    run_dir = fresh_run_dir(out, force)
    root = report.layout.root
    exact, near = validation_leaks(report, split.train, split.validation)
    data = {"data_dir": str(root.resolve()), "split": split.summary(),
            "validation_identical_to_train": len(exact), "validation_near_duplicate_of_train": len(near),
            "unreadable_files_skipped": [str(path) for path, _ in report.corrupt]}
    write_split(run_dir / "split.json", root, split.class_names, split.train, split.validation, method=split.method,
                **split.details)
    session = Session(run_dir, config, split.class_names, split, root, events, data)
    session.start(model)
    return session.run()


def resume(run_dir: str | Path, epochs: int | None = None, device: str | None = None,
           data_dir: str | Path | None = None, events: TrainingEvents | None = None) -> TrainResult:
    """Continue the run in ``run_dir`` from its last checkpoint up to ``epochs`` (default: the run's own),
    with its own settings, split and optimizer state. ``data_dir`` if the images have moved."""
    run_dir = Path(run_dir)
    last = run_dir / "last.safetensors"
    if not last.is_file():
        raise ConvlensError(f"--resume {run_dir}: no last.safetensors there; is it a convlens training run?")
    metadata = read_metadata(last)
    config = TrainConfig.from_dict(metadata["training"])
    config.epochs = epochs or config.epochs
    config.device = device or config.device
    config.validate()
    metrics = _read_json(run_dir / "metrics.json")
    done = int(metadata["epoch"])  # metrics.json may hold one more epoch if a run stopped while writing
    metrics["epochs"] = metrics["epochs"][:done]
    if done >= config.epochs:
        raise ConvlensError(f"{run_dir} has trained {done} epochs already; pass --epochs above {done} to continue")
    root = Path(data_dir) if data_dir is not None else Path(metadata["data_dir"])
    classes, train_samples, validation_samples = read_split(run_dir / "split.json", root)
    record = _read_json(run_dir / "split.json")
    split = Split(classes, train_samples, validation_samples, record.get("method", "file"))
    session = Session(run_dir, config, classes, split, root, events or TrainingEvents(), metrics["data"],
                      previous_seconds=metrics.get("wall_seconds", 0.0))
    session.restore(metadata, [EpochRecord(**r) for r in metrics["epochs"]])
    return session.run()


def fresh_run_dir(out: str | Path, force: bool = False) -> Path:
    """``out`` empty and ready. A new or empty folder, or an earlier convlens output, is taken; an earlier run or
    a folder of other files only with ``force`` (``convlens.output.check_out`` says which folders never)."""
    from convlens.output import check_out, make_parents

    out = check_out(out, force=force, run=True)
    if out.exists() and any(out.iterdir()):
        shutil.rmtree(out)
    make_parents(out)
    return out


class Session:
    """One run's model, data, optimizer and history; writes the run directory as it goes."""

    def __init__(self, run_dir: Path, config: TrainConfig, class_names: list[str], split: Split, root: Path,
                 events: TrainingEvents, data: dict, previous_seconds: float = 0.0) -> None:
        self.run_dir, self.config, self.class_names, self.split, self.root = run_dir, config, class_names, split, root
        self.events, self.data, self.previous_seconds = events, data, previous_seconds
        self.device = torch.device(resolve_device(config.device))
        self.history: list[EpochRecord] = []
        self.phase: str | None = None
        self.keep_eval: list = []

    # -- setting up ---------------------------------------------------------------------------------------------
    def start(self, model: TrainableModel) -> None:
        self._adopt(model)
        self._enter_phase(self.config.phase(1))
        if 0 in self.config.snapshots:
            self._save(self.run_dir / "snapshots" / "epoch_000", None)

    def restore(self, metadata: dict, history: list[EpochRecord]) -> None:
        preprocessing = Preprocessing.from_dict(metadata["preprocessing"])
        module = build_architecture(metadata["architecture"], len(self.class_names), metadata.get("img_size"),
                                    metadata.get("build_kwargs"))
        last = self.run_dir / "last.safetensors"
        zoo.load_weights_into(module, zoo.load_state_dict_file(last), str(last))
        self._adopt(TrainableModel(module, preprocessing, metadata["architecture"], zoo.last_linear(module)[0],
                                   metadata.get("img_size") or preprocessing.input_size[0],
                                   dict(metadata.get("build_kwargs") or {})))
        self.history = history
        state = _optimizer_state(self.run_dir / OPTIMIZER_STATE, self.device)
        if state["epoch"] != len(history):
            raise ConvlensError(f"{self.run_dir}: the optimizer state is from epoch {state['epoch']}, the last "
                                f"checkpoint from epoch {len(history)}; the run stopped while writing")
        self._enter_phase(state["phase"])
        self.optimizer.load_state_dict(state["optimizer"])

    def _adopt(self, model: TrainableModel) -> None:
        self.model = model
        model.module.to(self.device)
        self.normalize = Normalizer(model.preprocessing, self.device)
        size = model.preprocessing.input_size
        geometry = model.preprocessing.geometry
        augment = keras_augmentation() if self.config.augment else None
        self.train_set = ImageFolderDataset(self.split.train, self.class_names, geometry, size, augment)
        self.validation_set = ImageFolderDataset(self.split.validation, self.class_names, geometry, size)
        self.sampler_generator = torch.Generator()
        workers = self.config.workers
        pin = self.device.type == "cuda"
        self.train_loader = DataLoader(self.train_set, batch_size=self.config.batch_size, shuffle=True,
                                       generator=self.sampler_generator, num_workers=workers, pin_memory=pin)
        self.validation_loader = DataLoader(self.validation_set, batch_size=max(self.config.batch_size, EVAL_BATCH),
                                            num_workers=workers, pin_memory=pin)

    def _enter_phase(self, phase: str) -> None:
        """Freeze or unfreeze the backbone and make the optimizer for ``phase`` (a fresh one on unfreezing)."""
        self.phase = phase
        module, head = self.model.module, self.model.head
        if self.config.freeze_backbone:
            self.keep_eval = set_backbone_trainable(module, head, trainable=phase == "full")
            parameters = head_parameters(module, head) if phase == "frozen" else list(module.parameters())
            lr = self.config.learning_rate if phase == "frozen" else self.config.finetune_learning_rate
        else:
            parameters, lr = list(module.parameters()), self.config.learning_rate
        if self.config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(parameters, lr=lr, momentum=self.config.momentum,
                                             weight_decay=self.config.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(parameters, lr=lr, weight_decay=self.config.weight_decay)

    # -- training -----------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        start = time.perf_counter()
        try:
            for epoch in range(len(self.history) + 1, self.config.epochs + 1):
                self._epoch(epoch)
                self._write_metrics(time.perf_counter() - start)
        except KeyboardInterrupt:
            if self.history:  # the figures show what was finished; --resume continues from it
                self._finish()
            raise
        self._finish()
        return TrainResult(self.run_dir, self.class_names, self.history, self.best_epoch, len(self.split.train),
                           len(self.split.validation), self.previous_seconds + time.perf_counter() - start,
                           self.model.img_size)

    def _epoch(self, epoch: int) -> None:
        phase = self.config.phase(epoch)
        if phase != self.phase:
            self._enter_phase(phase)
        # Shuffling and augmentation depend on (seed, epoch) only: resuming reproduces an unbroken run.
        base = self.config.seed * 1_000_003 + 2 * epoch
        self.sampler_generator.manual_seed(base)
        torch.manual_seed(base + 1)
        self.events.epoch_started(epoch, self.config.epochs, len(self.train_loader), phase)
        started = time.perf_counter()
        train_loss, train_accuracy = train_one_epoch(self.model.module, self.train_loader, self.optimizer,
                                                     self.normalize, self.keep_eval, self.events)
        result = evaluate(self.model.module, self.validation_loader, self.normalize)
        record = EpochRecord(epoch, train_loss, train_accuracy, result.loss, result.accuracy,
                             self.optimizer.param_groups[0]["lr"], phase, time.perf_counter() - started)
        is_best = self._is_best(record)
        self.history.append(record)
        self._save(self.run_dir / "last", record)
        torch.save({"epoch": epoch, "phase": phase, "optimizer": self.optimizer.state_dict()},
                   self.run_dir / OPTIMIZER_STATE)
        if is_best:
            self._save(self.run_dir / "best", record)
        if epoch in self.config.snapshots:
            self._save(self.run_dir / "snapshots" / f"epoch_{epoch:03d}", record)
        self.events.epoch_done(record, is_best)

    def _is_best(self, record: EpochRecord) -> bool:
        """Higher validation accuracy, ties broken by lower validation loss (the first such epoch wins)."""
        if not self.history:
            return True
        best = self.best
        return (record.val_accuracy, -record.val_loss) > (best.val_accuracy, -best.val_loss)

    @property
    def best_epoch(self) -> int:
        return self.best.epoch

    @property
    def best(self) -> EpochRecord:
        best = self.history[0]
        for record in self.history[1:]:
            if (record.val_accuracy, -record.val_loss) > (best.val_accuracy, -best.val_loss):
                best = record
        return best

    # -- writing ------------------------------------------------------------------------------------------------
    def metadata(self, record: EpochRecord | None) -> dict:
        return {**self.model.metadata(self.class_names),
                "epoch": 0 if record is None else record.epoch,
                "metrics": None if record is None else record.to_dict(),
                "training": self.config.to_dict(),
                "data_dir": str(self.root.resolve())}

    def _save(self, stem: Path, record: EpochRecord | None) -> None:
        """A checkpoint written beside its final name and moved into place (never half-written)."""
        partial = stem.with_name(f".{stem.name}-partial")
        save_checkpoint(partial, self.model.module, self.metadata(record))
        for suffix in (".safetensors", ".json"):
            os.replace(partial.with_suffix(suffix), stem.with_suffix(suffix))

    def _write_metrics(self, seconds: float) -> None:
        best, final = self.best, self.history[-1]
        metrics = {"class_names": self.class_names, "epochs": [r.to_dict() for r in self.history],
                   "best": best.to_dict(), "final": final.to_dict(), "train_size": len(self.split.train),
                   "validation_size": len(self.split.validation), "data": self.data,
                   "wall_seconds": round(self.previous_seconds + seconds, 3)}
        _write_json(self.run_dir / "metrics.json", metrics)

    def _finish(self) -> None:
        """Curves, the confusion matrix of the best checkpoint on the validation set, summary and arrays."""
        best = self.best
        weights = self.run_dir / "best.safetensors"
        last_state = {k: v.detach().clone() for k, v in self.model.module.state_dict().items()}
        self.model.module.load_state_dict(zoo.load_state_dict_file(weights))
        result = evaluate(self.model.module, self.validation_loader, self.normalize)
        self.model.module.load_state_dict(last_state)
        predictions = result.probabilities.argmax(1).numpy()
        counts = plots.confusion_matrix(result.targets.numpy(), predictions, len(self.class_names))
        arch = self.model.architecture
        size = "x".join(map(str, self.model.preprocessing.input_size))
        title = (f"{arch} {size} on {self.root.name}: best validation {100 * best.val_accuracy:.1f}% "
                 f"(epoch {best.epoch}), last {100 * self.history[-1].val_accuracy:.1f}%")
        plots.save(plots.curves_figure(self.history, best.epoch, title), self.run_dir / "curves.png")
        plots.save(plots.confusion_figure(counts, self.class_names,
                                          f"validation set ({len(result.targets)} images), best checkpoint "
                                          f"(epoch {best.epoch}): {100 * result.accuracy:.1f}% correct"),
                   self.run_dir / "confusion.png")
        examples = [self.validation_set[i][0] for i in range(min(INPUT_EXAMPLES, len(self.validation_set)))]
        inputs = self.normalize(torch.stack(examples)).cpu().numpy().astype(np.float32)
        np.savez_compressed(self.run_dir / "arrays.npz", input=inputs, validation_targets=result.targets.numpy(),
                            validation_probabilities=result.probabilities.numpy(), confusion=counts,
                            **{key: np.array([getattr(r, key) for r in self.history]) for key in
                               ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")})
        summary = {"command": "train", "model": self.metadata(best), "training": self.config.to_dict(),
                   "data": self.data, "best": best.to_dict(), "final": self.history[-1].to_dict(),
                   "confusion": counts.tolist(), "figures": ["curves.png", "confusion.png"],
                   "arrays": ["input", "validation_targets", "validation_probabilities", "confusion", "epoch",
                              "train_loss", "train_accuracy", "val_loss", "val_accuracy"],
                   "compute_seconds": round(sum(r.seconds for r in self.history), 4),
                   "versions": library_versions()}
        _write_json(self.run_dir / "summary.json", summary)


def _read_json(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConvlensError(f"{path}: unreadable ({exc.__class__.__name__}); the run cannot be resumed") from None
    if not isinstance(record, dict):
        raise ConvlensError(f"{path}: not a convlens run record; the run cannot be resumed")
    return record


def _optimizer_state(path: Path, device) -> dict:
    """The optimizer state ``resume`` continues from, or one line saying why it cannot be read."""
    if not path.is_file():
        raise ConvlensError(f"{path} is missing; the run cannot be resumed (start a new run from its "
                            "last.safetensors with --weights)")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the file's fault
        raise ConvlensError(f"{path}: unreadable optimizer state ({exc.__class__.__name__}; convlens never "
                            "unpickles Python objects); the run cannot be resumed: start a new one from its "
                            "last.safetensors with --weights") from None
    if not isinstance(state, dict) or not {"epoch", "phase", "optimizer"} <= set(state):
        raise ConvlensError(f"{path}: not a convlens optimizer state (expected epoch, phase and optimizer)")
    return state


def _write_json(path: Path, record: dict) -> None:
    partial = path.with_name(f".{path.name}-partial")
    partial.write_text(json.dumps(record, indent=2, default=_plain))
    os.replace(partial, path)


def _plain(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
