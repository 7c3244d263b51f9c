"""One training epoch and one evaluation pass: the inner loops, kept as lean as a hand-written loop."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from convlens.models.preprocessing import Preprocessing

PROGRESS_INTERVAL = 0.2  # seconds between progress reports (reading the running loss syncs a GPU)


class DataWarning(UserWarning):
    """Bad or leaky training data (unreadable files skipped, validation images also in train)."""


class TrainingEvents:
    """What a run reports while it works. The default reports nothing but warnings (as Python warnings);
    the CLI subclasses it to draw progress bars. Library code never prints."""

    def track(self, items: Iterable, total: int, description: str) -> Iterator:
        yield from items

    def warning(self, message: str) -> None:
        warnings.warn(message, DataWarning, stacklevel=2)

    def fold_started(self, fold: int, folds: int, train_size: int, validation_size: int) -> None:
        pass

    def epoch_started(self, epoch: int, epochs: int, batches: int, phase: str) -> None:
        pass

    def batch_progress(self, batches_done: int, loss: float, accuracy: float) -> None:
        pass

    def epoch_done(self, record: EpochRecord, is_best: bool) -> None:
        pass


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    phase: str
    seconds: float

    def to_dict(self) -> dict:
        return dict(vars(self))


class Normalizer:
    """uint8 ``N x 3 x H x W`` batches to model input on the device, with the statistics made once."""

    def __init__(self, preprocessing: Preprocessing, device: torch.device | str) -> None:
        self.identity = preprocessing.mean == (0.0, 0.0, 0.0) and preprocessing.std == (1.0, 1.0, 1.0)
        mean = torch.tensor(preprocessing.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(preprocessing.std, device=device).view(1, 3, 1, 1)
        self.scale, self.offset = 1.0 / (255.0 * std), mean / std  # (x / 255 - mean) / std in two ops
        self.device = device

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.device, non_blocking=True).float()
        if self.identity:
            return pixels.div_(255.0)
        return pixels.mul_(self.scale).sub_(self.offset)


def logits_of(output) -> torch.Tensor:
    """Training-mode outputs of some torchvision models are tuples (Inception's auxiliary logits)."""
    if isinstance(output, torch.Tensor):
        return output
    return output.logits if hasattr(output, "logits") else output[0]


def train_one_epoch(module: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    normalize: Normalizer, keep_eval: Sequence[nn.Module] = (),
                    events: TrainingEvents | None = None) -> tuple[float, float]:
    """One pass over ``loader``; returns the mean loss and accuracy over the epoch (Keras's training figures:
    running averages, in training mode, on augmented inputs). ``keep_eval`` layers stay in eval mode."""
    module.train()
    for layer in keep_eval:
        layer.eval()
    criterion = nn.CrossEntropyLoss()
    device = normalize.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    last_report = time.perf_counter()
    for step, (pixels, targets) in enumerate(loader, start=1):
        targets = targets.to(device, non_blocking=True)
        logits = logits_of(module(normalize(pixels)))
        loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(targets)
        correct += (logits.detach().argmax(1) == targets).sum()
        seen += len(targets)
        if events is not None and time.perf_counter() - last_report >= PROGRESS_INTERVAL:
            events.batch_progress(step, loss_sum.item() / seen, correct.item() / seen)
            last_report = time.perf_counter()
    if seen == 0:
        return float("nan"), float("nan")
    if events is not None:
        events.batch_progress(len(loader), loss_sum.item() / seen, correct.item() / seen)
    return loss_sum.item() / seen, correct.item() / seen


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    targets: torch.Tensor  # N, on the CPU
    probabilities: torch.Tensor  # N x C, on the CPU


def evaluate(module: nn.Module, loader: DataLoader, normalize: Normalizer) -> Evaluation:
    """Loss, accuracy and class probabilities over ``loader`` in eval mode (the module's mode is restored)."""
    was_training = module.training
    module.eval()
    losses, all_targets, all_probabilities = [], [], []
    try:
        with torch.inference_mode():
            for pixels, targets in loader:
                logits = module(normalize(pixels)).float()
                targets = targets.to(logits.device)
                losses.append(nn.functional.cross_entropy(logits, targets, reduction="sum"))
                all_targets.append(targets.cpu())
                all_probabilities.append(logits.softmax(1).cpu())
    finally:
        module.train(was_training)
    if not all_targets:
        return Evaluation(float("nan"), float("nan"), torch.zeros(0, dtype=torch.long), torch.zeros(0, 0))
    targets, probabilities = torch.cat(all_targets), torch.cat(all_probabilities)
    loss = float(torch.stack(losses).sum()) / len(targets)
    accuracy = float((probabilities.argmax(1) == targets).float().mean())
    return Evaluation(loss, accuracy, targets, probabilities)
