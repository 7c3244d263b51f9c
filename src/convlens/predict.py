"""Top-K predictions: class names and probabilities, batched over images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image

from convlens.errors import ConvlensError
from convlens.hooks import preserved_state
from convlens.models.classifier import ImageClassifier


@dataclass(frozen=True)
class Prediction:
    index: int
    name: str
    probability: float

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.name} {100 * self.probability:.2f}%"


def check_count(name: str, value: int, low: int = 1, high: int | None = None) -> None:
    """Numeric arguments out of their range fail with one line naming the argument and the range."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        limit = f"{low}<=x<={high}" if high is not None else f"x>={low}"
        raise ConvlensError(f"{name} {value!r} is not in the range {limit}")


def probabilities(model: ImageClassifier, inputs: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Softmax over the logits for a preprocessed batch, evaluated in chunks, on the CPU as float32."""
    check_count("batch_size", batch_size)
    chunks = []
    with preserved_state(model) as module, torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start:start + batch_size].to(model.device)
            chunks.append(torch.softmax(module(batch).float(), dim=1).cpu())
    return torch.cat(chunks)


def top_k(model: ImageClassifier, probs: torch.Tensor, k: int = 3) -> list[list[Prediction]]:
    check_count("top", k)
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
    return [
        [Prediction(int(i), model.class_name(int(i)), float(v)) for v, i in zip(row_v, row_i, strict=True)]
        for row_v, row_i in zip(values, indices, strict=True)
    ]


def predict(model: ImageClassifier, images: Sequence[str | Path | Image.Image] | torch.Tensor, top: int = 3,
            batch_size: int = 32) -> list[list[Prediction]]:
    """The ``top`` classes of each image (paths, PIL images, or an already preprocessed batch)."""
    check_count("top", top)
    check_count("batch_size", batch_size)
    if isinstance(images, torch.Tensor):
        return top_k(model, probabilities(model, images, batch_size), top)
    results: list[list[Prediction]] = []
    for start in range(0, len(images), batch_size):  # decode a batch at a time: bounded memory
        inputs = model.prepare(list(images[start:start + batch_size]))
        results += top_k(model, probabilities(model, inputs, batch_size), top)
    return results


# ``convlens.predict`` is both this module and its function (``import convlens.predict`` rebinds the name).
from convlens._callable import callable_package  # noqa: E402

callable_package(__name__, "predict")
