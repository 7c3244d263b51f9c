"""``topk`` over the leaf dataset against the floor: a bare forward pass over the same images, same loader.

The issue's target: ``topk`` keeps at least 90 % of the throughput of just decoding the images and running
the model on them (ratio <= 1 / 0.9 on time). Two cases: the streaming scan alone, and the whole command
(``top_activations``: the scan, the receptive-field trace, patches and 16 x 9
single-activation projections, each from the image cut down to its field). Both run on the whole leaf folder
(804 images) in quick mode too: what comes after the scan is a fixed cost, and the target is about the folder.
"""

from __future__ import annotations

import torch

from bench.harness import DEVICE, BenchCase
from bench.inputs import LEAF

# Each call takes ~2.3 s, decoding dominates it and varies by up to 20 % from pass to pass on a shared 2-core
# machine: 15 alternating repetitions keep the medians within a few percent (9 in quick mode, to stay within
# its 10 minutes).
REPETITIONS = {False: 15, True: 9}


def cases(quick: bool) -> list[BenchCase]:
    import convlens
    from convlens.data import list_images
    from convlens.zeiler import scan_top, top_activations
    from convlens.zeiler.topk import image_batches

    if not LEAF.is_dir():
        return []
    paths = list_images(LEAF)
    model = convlens.load_model("baseline", device=str(DEVICE))
    torch.manual_seed(0)
    model.module.load_state_dict({k: torch.randn_like(v) * 0.1 for k, v in model.module.state_dict().items()})
    batch_size, workers = 64, 0

    def scan():
        return scan_top(model, paths, "relu3", units="0:16", k=9, batch_size=batch_size, num_workers=workers)

    def command():
        return top_activations(model, paths, "relu3", units="0:16", k=9, batch_size=batch_size,
                               num_workers=workers)

    def floor():
        seen = 0
        with torch.inference_mode():
            for inputs, _, _ in image_batches(paths, model.preprocessing, batch_size, workers):
                model.module(inputs.to(DEVICE, non_blocking=True))
                seen += len(inputs)
        return seen

    def check(result, seen):
        if len(paths) != seen:
            raise AssertionError(f"topk had {len(paths)} images, the floor saw {seen}")
        if (torch.as_tensor(result.images) < 0).any() or not torch.isfinite(torch.as_tensor(result.values)).all():
            raise AssertionError("topk left empty slots on a folder of hundreds of images")

    where = "leaf (train + validation)"
    floor_name = "floor: decode + bare forward, same DataLoader"
    return [
        BenchCase(f"topk scan baseline 32 relu3 {len(paths)} images", scan, floor, floor_name, check=check,
                  max_ratio=1 / 0.9, note=f"{where}, batch {batch_size}, 16 units x top-9, streaming",
                  repetitions=REPETITIONS[quick]),
        BenchCase(f"topk whole command baseline 32 relu3 {len(paths)} images", command, floor, floor_name,
                  check=check, max_ratio=1 / 0.9, repetitions=REPETITIONS[quick],
                  note="scan + receptive field + patches + 144 single-activation projections (cut to the field)"),
    ]
