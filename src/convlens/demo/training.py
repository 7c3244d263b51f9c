"""The demo's training section: the baseline CNN on scikit-learn's handwritten digits, no download."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from convlens.training.config import TrainConfig
from convlens.training.loop import TrainingEvents
from convlens.training.run import train

if TYPE_CHECKING:  # convlens.demo imports this module
    from convlens.demo.core import DemoContext, DemoSection

DIGIT_SIDE = 32
DEMO_CONFIG = TrainConfig(arch="baseline", img_size=DIGIT_SIDE, epochs=3, batch_size=32, optimizer="adam",
                          seed=0, device="cpu", snapshots=(0, 1, 3), dedupe=True)


def write_digits_folder(folder: Path, side: int = DIGIT_SIDE) -> Path:
    """scikit-learn's 1797 8x8 digits, upscaled to ``side`` px and written as ``folder/digit_N/*.png``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for number, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        path = folder / f"digit_{label}" / f"{number:04d}.png"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        gray = np.clip(pixels * (255.0 / 16.0), 0, 255).astype(np.uint8)  # 0..16 ink levels
        Image.fromarray(gray, mode="L").resize((side, side), Image.Resampling.BICUBIC).save(path)
    return folder


class CollectedEvents(TrainingEvents):
    """Keeps the data warnings for the section text instead of printing them."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def warning(self, message: str) -> None:
        self.messages.append(message)


def section(context: DemoContext) -> DemoSection:

    base = context.out / "training"
    data = write_digits_folder(base / "digits")
    events = CollectedEvents()
    result = train(data, base / "run", DEMO_CONFIG, events=events)
    final = result.final
    notes = f" Data check: {' '.join(events.messages)}" if events.messages else ""
    command = (f"convlens train {data.relative_to(context.out)} --arch baseline --img-size {DIGIT_SIDE} "
               f"--epochs {DEMO_CONFIG.epochs} --optimizer adam --dedupe --out training/run")
    text = (f"{command}: the leaf study's baseline CNN learns scikit-learn's handwritten digits, upscaled to "
            f"{DIGIT_SIDE} px ({result.train_size} training and {result.validation_size} validation images, a "
            f"stratified split that keeps near-identical digits on one side), to {100 * final.val_accuracy:.1f}% "
            f"validation accuracy after {final.epoch} epochs (best {100 * result.best.val_accuracy:.1f}% at epoch "
            f"{result.best_epoch}) in {result.wall_seconds:.0f} s. The run folder is a model for every other "
            f"command: convlens predict training/run IMAGE uses that best checkpoint.{notes}")
    return DemoSection("Training a CNN on an image folder", text,
                       [str(Path("training/run/curves.png")), str(Path("training/run/confusion.png"))])
