"""One training epoch: convlens's loop against a plain hand-written PyTorch loop on the same DataLoader.

Both sides get the same model (a copy reset to the same starting weights on every call), the same optimizer
settings and the same DataLoader (decoded uint8 images cached in memory, reshuffled from the same seed on
every call), so they do identical arithmetic; the check compares their epoch loss and accuracy.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from bench.harness import DEVICE, BenchCase

NOTE = ("peer: a plain loop over the same DataLoader (cached decoded images, uint8 -> float / 255 -> "
        "normalise, forward, cross-entropy, backward, step); convlens adds running loss/accuracy and progress "
        "reports")


def image_folder(root: Path, count: int, side: int, classes: int = 3) -> list:
    from convlens.data.folders import Sample

    rng = np.random.default_rng(0)
    samples = []
    for index in range(count):
        label = index % classes
        pixels = rng.integers(0, 110, (side, side, 3))
        pixels[..., label % 3] += 120
        path = root / f"class_{label}" / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        samples.append(Sample(path, f"class_{label}"))
    return samples


def epoch_case(name: str, module: nn.Module, preprocessing, samples, batch_size: int) -> BenchCase:
    from convlens.data.folders import ImageFolderDataset
    from convlens.training import Normalizer, TrainingEvents, train_one_epoch

    classes = sorted({s.label for s in samples})
    size = preprocessing.input_size
    dataset = ImageFolderDataset(samples, classes, preprocessing.geometry, size)
    generator = torch.Generator()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)
    start = copy.deepcopy(module.state_dict())
    ours_module, peer_module = copy.deepcopy(module).to(DEVICE), copy.deepcopy(module).to(DEVICE)
    normalize = Normalizer(preprocessing, DEVICE)
    mean = torch.tensor(preprocessing.mean, device=DEVICE).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std, device=DEVICE).view(1, 3, 1, 1)
    # (x / 255 - mean) / std written as convlens evaluates it, x * scale - offset: the last bits of the inputs
    # differ otherwise, and a random-init network in training mode (BatchNorm on batch statistics) amplifies
    # them to ~0.4 % of the epoch loss in four SGD steps, which the check would take for different work
    scale, offset = 1.0 / (255.0 * std), mean / std

    def fresh(target: nn.Module) -> torch.optim.Optimizer:
        target.load_state_dict(start)
        generator.manual_seed(0)
        torch.manual_seed(0)
        return torch.optim.SGD(target.parameters(), lr=0.01, momentum=0.9)

    def ours():
        optimizer = fresh(ours_module)
        return train_one_epoch(ours_module, loader, optimizer, normalize, events=TrainingEvents())

    def peer():
        optimizer = fresh(peer_module)
        peer_module.train()
        criterion = nn.CrossEntropyLoss()
        total, correct, seen = 0.0, 0, 0
        for pixels, targets in loader:
            inputs = pixels.to(DEVICE, non_blocking=True).float() * scale - offset
            targets = targets.to(DEVICE, non_blocking=True)
            logits = peer_module(inputs)
            loss = criterion(logits, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(targets)
            correct += (logits.argmax(1) == targets).sum().item()
            seen += len(targets)
        return total / seen, correct / seen

    def check(a, b):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

    # Sub-second epochs of many small steps: the most timing noise of any case here (a quick run once showed
    # 1.22 where the full run and a standalone run show 1.06 and 0.99), so more repetitions than the runner's.
    return BenchCase(name, ours, peer, "plain PyTorch training loop", check=check, max_ratio=1.10, note=NOTE,
                     repetitions=15)


def cases(quick: bool) -> list[BenchCase]:
    from convlens.models import BaselineCNN
    from convlens.models.loading import baseline_preprocessing

    root = Path(tempfile.mkdtemp(prefix="convlens-bench-training-"))
    torch.manual_seed(0)
    baseline = BaselineCNN(3, 32)
    result = [
        epoch_case("train epoch baseline 32 b32 (512 images)", baseline, baseline_preprocessing(32),
                   image_folder(root / "b32", 512, 40), 32),
        epoch_case("train epoch baseline 32 b1 (Keras recipe, 128 images)", baseline, baseline_preprocessing(32),
                   image_folder(root / "b1", 128, 40), 1),
    ]
    if not quick:
        import convlens

        resnet = convlens.load_model("torchvision:resnet18", device=str(DEVICE))
        from convlens.models import zoo
        from convlens.training.model import resized

        module = zoo.replace_head(resnet.module, 3)
        result.append(epoch_case("train epoch resnet18 112 b16 (64 images)", module,
                                 resized(resnet.preprocessing, 112), image_folder(root / "r18", 64, 128), 16))
    return result
