"""Dataset-scale jobs: throughput (images/s) in-process against Ray with 1 and 2 workers (issue 18).

Cases, each the whole job as a user runs it (output folder written; on Ray also the Parquet shards):

- Ray, 1 worker vs in-process: the cost of Ray itself (target: Ray >= 0.85x the in-process throughput, i.e. a
  time ratio <= 1 / 0.85);
- Ray, 2 workers vs Ray, 1 worker: the scaling (target: >= 1.6x, time ratio <= 1 / 1.6, where two cores are
  free);

for the top-k scan (baseline CNN at 32 px on the leaf folder; in full mode also the default EfficientNet-Lite0
on the photo folder) and for folder Grad-CAM (baseline on leaf). One local Ray (``num_cpus`` = the machine's
cores) serves every case; a job's time includes starting its actors (each loads the model once), the fixed cost
that a folder of this size cannot amortise. ``docs/scale.md`` reads these numbers.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import torch

from bench.harness import BenchCase
from bench.inputs import LEAF, SHARED_DATA

RAY_1 = 1 / 0.85  # Ray with 1 worker keeps >= 85 % of the in-process throughput
RAY_2 = 1 / 1.6  # 2 workers give >= 1.6x one worker


def _ray_ready() -> bool:
    try:
        import ray
    except ImportError:
        return False
    from convlens.distributed.cluster import RayOptions, connect, disconnect

    started = connect(RayOptions("local", workers=2))
    if started:
        atexit.register(disconnect, True)
    return ray.is_initialized()


def _model(spec: str):
    import convlens

    torch.manual_seed(0)
    model = convlens.load_model(spec, device="cpu")
    if spec.startswith("baseline"):
        model.module.load_state_dict({k: torch.randn_like(v) * 0.1 for k, v in model.module.state_dict().items()})
    return model


class Scratch:
    """A fresh output folder per call (the Ray runner never resumes here)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="convlens-bench-scale-"))
        self.count = 0
        atexit.register(shutil.rmtree, self.root, True)

    def out(self) -> Path:
        self.count += 1
        return self.root / f"out{self.count}"


def _topk_cases(label: str, model, paths: list[Path], layer: str, batch_size: int, repetitions: int,
                scratch: Scratch) -> list[BenchCase]:
    from convlens.distributed.topk import topk_on_ray
    from convlens.zeiler import top_activations

    def local():
        return top_activations(model, paths, layer, units="0:16", k=9, batch_size=batch_size).save(scratch.out())

    def on_ray(workers: int):
        return lambda: topk_on_ray(model, paths, layer, scratch.out(), units="0:16", k=9, batch_size=batch_size,
                                   workers=workers, shard_size=256)

    note = f"{len(paths)} images, 16 units x top-9, batch {batch_size}, projections included"
    return [
        BenchCase(f"scale topk {label}: Ray 1 worker", on_ray(1), local, "in-process topk", max_ratio=RAY_1,
                  note=note, repetitions=repetitions),
        BenchCase(f"scale topk {label}: Ray 2 workers", on_ray(2), on_ray(1), "Ray 1 worker", max_ratio=RAY_2,
                  note=note, repetitions=repetitions),
    ]


def _cam_cases(model, paths: list[Path], batch_size: int, repetitions: int, scratch: Scratch) -> list[BenchCase]:
    import convlens
    from convlens.distributed import cam_on_ray

    def local():
        return convlens.cam(model, paths, method="gradcam", batch_size=batch_size).save(scratch.out())

    def on_ray(workers: int):
        return lambda: cam_on_ray(model, paths, scratch.out(), method="gradcam", batch_size=batch_size,
                                  workers=workers, shard_size=256)

    note = f"{len(paths)} images, Grad-CAM at the default layer (conv3), batch {batch_size}, maps in shards"
    return [
        BenchCase("scale gradcam baseline 32 leaf: Ray 1 worker", on_ray(1), local, "in-process cam",
                  max_ratio=RAY_1, note=note, repetitions=repetitions),
        BenchCase("scale gradcam baseline 32 leaf: Ray 2 workers", on_ray(2), on_ray(1), "Ray 1 worker",
                  max_ratio=RAY_2, note=note, repetitions=repetitions),
    ]


def cases(quick: bool) -> list[BenchCase]:
    from convlens.data import list_images

    if not LEAF.is_dir() or not _ray_ready():
        return []
    scratch = Scratch()
    leaf = list_images(LEAF)
    repetitions = 1 if quick else 3
    # quick: 128 images; every Ray job pays its fixed start (actors, model loads), 4 jobs per case
    sample = leaf[:128] if quick else leaf
    baseline = _model("baseline")
    found: list[BenchCase] = []
    try:
        import convlens.zeiler  # noqa: F401 - top-k on Ray needs the zeiler package's mergeable table
    except ImportError:
        pass
    else:
        found += _topk_cases("baseline 32 leaf", baseline, sample, "relu3", 64, repetitions, scratch)
        photos = list_images(SHARED_DATA / "photos") if (SHARED_DATA / "photos").is_dir() else []
        if not quick and photos:
            found += _topk_cases("efficientnet_lite0 photos", _model("efficientnet_lite0"), photos, "blocks.3", 16,
                                 repetitions, scratch)
    found += _cam_cases(baseline, sample, 32, repetitions, scratch)
    return found
