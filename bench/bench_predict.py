"""Predictions against the floor: a bare forward pass of the same batch in inference mode."""

from __future__ import annotations

import torch

from bench.harness import DEVICE, BenchCase


def cases(quick: bool) -> list[BenchCase]:
    import convlens
    from convlens.predict import probabilities

    model = convlens.load_model("efficientnet_lite0", device=str(DEVICE))
    result = []
    for batch in (1, 16):
        inputs = torch.randn(batch, 3, 224, 224, device=model.device)

        def ours(inputs=inputs):
            return probabilities(model, inputs)

        def floor(inputs=inputs):
            with torch.inference_mode():
                return torch.softmax(model.module(inputs), dim=1).cpu()

        result.append(BenchCase(f"predict efficientnet_lite0 224 b{batch}", ours, floor, "floor: bare forward",
                                check=lambda a, b: torch.testing.assert_close(a, b), max_ratio=1.05,
                                note="probabilities of a preprocessed batch (own 5 % target, not from an issue)",
                                # a batch-1 call takes ~40 ms and a few ms of noise: cheap to repeat more
                                repetitions=25 if batch == 1 else None))
    return result
