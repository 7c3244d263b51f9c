"""Dataset-scale jobs: throughput (images/s) in-process against Ray with 1 and 2 workers (issue 18).

Cases, each the whole job as a user runs it (output folder written; on Ray also the Parquet shards):

- Ray, 1 worker vs in-process: the cost of Ray itself (target: Ray >= 0.85x the in-process throughput, i.e. a
  time ratio <= 1 / 0.85); the worker, alone on the local Ray, gets the machine's cores and torch threads, as
  the in-process run has them;
- Ray, 2 workers vs Ray, 1 worker of the same size (1 core each, the machine's 2 cores shared): the scaling
  (target: >= 1.6x, time ratio <= 1 / 1.6, where two cores are free);

for the top-k scan (baseline CNN at 32 px on the leaf folder; in full mode also the default EfficientNet-Lite0
on the photo folder, and the baseline on ``LEAF_VARIANTS`` leaf variants, a folder large enough that the scan
outweighs Ray's fixed start: see ``LeafVariants``) and for folder Grad-CAM (baseline on leaf). One local Ray
(``num_cpus`` = the machine's cores) serves every case, started by the first case that runs and stopped after
the last; a job's time includes starting its actors (each loads the model once), the fixed cost that a folder of
the leaf folder's size cannot amortise.
Each case checks that both sides give the same table or maps and prints the Ray workers' peak resident memory
(also in the case's note). Quick mode (``make bench-quick``): ``QUICK_IMAGES`` leaf images, one timed
repetition, three cases (no Grad-CAM 2-worker case; measured about 13 minutes for four cases on 96 images with
the machine shared by the whole team, too much of the quick run's 15 minutes).
``python -m bench --only scale --no-write`` runs just these; ``--only "leaf variants"`` the large top-k case
(``CONVLENS_BENCH_LEAF_VARIANTS=300`` makes it small, to check it works). ``docs/scale.md`` reads these numbers.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.harness import BenchCase
from bench.inputs import LEAF, SHARED_DATA

RAY_1 = 1 / 0.85  # Ray with 1 worker keeps >= 85 % of the in-process throughput
RAY_2 = 1 / 1.6  # 2 workers give >= 1.6x one worker
QUICK_IMAGES = 64  # quick mode: every Ray job pays its fixed start (actors, model loads), 4 jobs per case
# full mode: a top-k scan long enough (~30 s per worker on 2 idle cores) that Ray's fixed ~5 s start is no
# longer most of the job; the environment variable makes it small, to check that the case works
LEAF_VARIANTS = int(os.environ.get("CONVLENS_BENCH_LEAF_VARIANTS", "10000"))


def _ray_installed() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


class LocalRay:
    """One local Ray for every scale case, started by the first Ray job that runs (``--only`` other cases:
    never) and shut down after the last case, so that no other benchmark shares the machine with it."""

    def __init__(self) -> None:
        self.started = False

    def ensure(self) -> None:
        from convlens.distributed.cluster import RayOptions, connect

        if not self.started:
            self.started = connect(RayOptions("local", workers=2))

    def stop(self) -> None:
        from convlens.distributed.cluster import disconnect

        disconnect(self.started)
        self.started = False


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


def _worker_memory(case: BenchCase, compare):
    """The agreement check of a case (``compare(ours, theirs)``), which also prints the peak resident memory of
    the Ray workers (each worker's own, the largest over the job) and adds it to the case's note."""

    def check(ours, theirs) -> None:
        compare(ours, theirs)
        peaks = [r.summary()["ray"]["worker_peak_memory_mb"] for r in (ours, theirs) if hasattr(r, "ray")]
        text = "Ray worker peak memory " + " / ".join(f"{p:.0f} MB" for p in peaks)
        # top-k: the projections of the winners run on actors started after the scan when there are many
        projected = [r.summary()["ray"]["projections"]["seconds"] for r in (ours, theirs)
                     if hasattr(r, "ray") and r.summary()["ray"].get("projections", {}).get("on") == "ray"]
        if projected:
            text += ", projections on Ray " + " / ".join(f"{p:.1f} s" for p in projected)
        print(f"[bench]   {text} (this case / its peer)" if len(peaks) == 2 else f"[bench]   {text}", flush=True)
        case.note += f"; {text}"

    return check


def _same_topk(ours, theirs) -> None:
    import numpy as np

    ours, theirs = ours.arrays(), theirs.arrays()
    for name in ("images", "positions", "boxes", "patches", "input"):
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    # Each case gives both sides the same torch thread count; where they differ (a worker of 1 core against the
    # in-process run's 2), oneDNN's depthwise convolutions (EfficientNet) sum in a thread-dependent order and the
    # last bits of a value may differ (measured: 9.5e-6 on 18.5). The tests find them equal bit for bit; the
    # winners (images, positions) must be equal above.
    np.testing.assert_allclose(ours["values"], theirs["values"], rtol=2e-6, atol=0, err_msg="values")
    scale = float(np.abs(theirs["projections"]).max())
    np.testing.assert_allclose(ours["projections"], theirs["projections"], rtol=1e-6, atol=1e-6 * scale,
                               err_msg="projections")


class LeafVariants(Sequence):
    """``count`` leaf-sized images made from the real leaf images, written once to a cache folder
    (``tempfile.gettempdir()/convlens-bench-leaf-variants-COUNT``, reused when its ``complete.json`` says it
    is whole) on first use, so that building the case list costs nothing.

    Variant ``v`` of source image ``s`` (the leaf folder's images in sorted order, ``count`` images in all,
    ``v = n // sources``): one of the 8 flips / 90-degree rotations (``v % 8``: rotations by 0, 90, 180, 270
    degrees, then the same after a left-right flip) of the whole image for ``v < 8``, of a crop of 7/8 of its
    width and height for ``8 <= v < 16`` (offset ``(s * 7) % margin`` from the left, ``(s * 3) % margin`` from
    the top), and so on with 6/8 for the next 8; saved as JPEG, quality 95, ``vNN-sNNNN.jpg``.
    """

    def __init__(self, sources: list[Path], count: int) -> None:
        self.sources, self.count = sources, count
        self.folder = Path(tempfile.gettempdir()) / f"convlens-bench-leaf-variants-{count}"
        self._paths: list[Path] | None = None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):
        return self.paths()[index]

    def paths(self) -> list[Path]:
        if self._paths is None:
            self._paths = self._make()
        return self._paths

    def _make(self) -> list[Path]:
        names = [f"v{n // len(self.sources):02d}-s{n % len(self.sources):04d}.jpg" for n in range(self.count)]
        marker = self.folder / "complete.json"
        recipe = {"count": self.count, "sources": len(self.sources), "recipe": 1}
        if not (marker.is_file() and json.loads(marker.read_text()) == recipe):
            print(f"[bench]   writing {self.count} leaf variants to {self.folder} (once)", flush=True)
            self.folder.mkdir(parents=True, exist_ok=True)
            for n, name in enumerate(names):
                self._variant(n // len(self.sources), n % len(self.sources)).save(self.folder / name, quality=95)
            marker.write_text(json.dumps(recipe))
        return [self.folder / name for name in names]

    def _variant(self, variant: int, source: int):
        from PIL import Image

        with Image.open(self.sources[source]) as opened:
            image = opened.convert("RGB")
        keep = max(1, 8 - variant // 8)  # eighths of each side kept
        if keep < 8:
            width, height = image.size
            crop_w, crop_h = max(1, width * keep // 8), max(1, height * keep // 8)
            left, top = (source * 7) % (width - crop_w + 1), (source * 3) % (height - crop_h + 1)
            image = image.crop((left, top, left + crop_w, top + crop_h))
        if variant % 8 >= 4:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image.rotate(90 * (variant % 4), expand=True)


def _same_cams(ours, theirs) -> None:
    import numpy as np

    ours, theirs = ours.arrays()["cam"], theirs.arrays()["cam"]
    count = min(len(ours), len(theirs))  # a job on Ray keeps the first PREVIEW maps in arrays.npz
    np.testing.assert_allclose(ours[:count], theirs[:count], rtol=1e-5, atol=1e-6)


def _case(name, convlens, peer, peer_name, max_ratio, note, repetitions, compare) -> BenchCase:
    case = BenchCase(name, convlens, peer, peer_name, max_ratio=max_ratio, note=note, repetitions=repetitions)
    case.check = _worker_memory(case, compare)
    return case


def _topk_cases(label: str, model, paths: Sequence[Path], layer: str, batch_size: int, repetitions: int,
                scratch: Scratch, ray: LocalRay, note: str = "") -> list[BenchCase]:
    from convlens.distributed.topk import topk_on_ray
    from convlens.zeiler import top_activations

    def local():
        result = top_activations(model, paths, layer, units="0:16", k=9, batch_size=batch_size)
        result.save(scratch.out())
        return result

    def on_ray(workers: int, cpus: float | None = None):
        def job():
            ray.ensure()
            return topk_on_ray(model, paths, layer, scratch.out(), units="0:16", k=9, batch_size=batch_size,
                               workers=workers, cpus_per_worker=cpus, shard_size=256)
        return job

    note = f"{len(paths)} images{note}, 16 units x top-9, batch {batch_size}, projections included"
    return [
        _case(f"scale topk {label}: Ray 1 worker", on_ray(1), local, "in-process topk", RAY_1, note, repetitions,
              _same_topk),
        _case(f"scale topk {label}: Ray 2 workers", on_ray(2), on_ray(1, cpus=1), "Ray 1 worker of 1 core",
              RAY_2, note, repetitions, _same_topk),
    ]


def linked_folder(paths: list[Path], root: Path, scratch: Scratch) -> Path:
    """A folder of symbolic links to ``paths`` (their places under ``root`` kept, so class subfolders stay): a
    folder input as a user gives one, for a part of a dataset."""
    folder = scratch.root / "linked"
    for path in paths:
        link = folder / path.relative_to(root)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(path.resolve())
    return folder


def _cam_cases(model, folder: Path, batch_size: int, repetitions: int, scratch: Scratch,
               ray: LocalRay, scaling: bool = True) -> list[BenchCase]:
    """Folder Grad-CAM given the folder, as ``convlens cam MODEL FOLDER`` does: both sides draw one grid of the
    first images (a list of files would draw a figure per image, ~0.15 s of matplotlib each, on the in-process
    side for every image and on Ray for the 64 of its preview: figures, not CAMs, would be timed)."""
    import convlens
    from convlens.data import list_images
    from convlens.distributed import cam_on_ray

    paths = list_images(folder)

    def local():
        result = convlens.cam(model, folder, method="gradcam", batch_size=batch_size)
        result.save(scratch.out())
        return result

    def on_ray(workers: int, cpus: float | None = None):
        def job():
            ray.ensure()
            return cam_on_ray(model, [folder], scratch.out(), method="gradcam", batch_size=batch_size,
                              workers=workers, cpus_per_worker=cpus, shard_size=256)
        return job

    note = f"{len(paths)} images, Grad-CAM at the default layer (conv3), batch {batch_size}, maps in shards"
    found = [_case("scale gradcam baseline 32 leaf: Ray 1 worker", on_ray(1), local, "in-process cam", RAY_1,
                   note, repetitions, _same_cams)]
    if scaling:
        found.append(_case("scale gradcam baseline 32 leaf: Ray 2 workers", on_ray(2), on_ray(1, cpus=1),
                           "Ray 1 worker of 1 core", RAY_2, note, repetitions, _same_cams))
    return found


def cases(quick: bool):
    """The scale cases (a generator: the local Ray stops once the last case has run)."""
    from convlens.data import list_images

    if not LEAF.is_dir() or not _ray_installed():
        return
    scratch, ray = Scratch(), LocalRay()
    leaf = list_images(LEAF)
    repetitions = 1 if quick else 3
    sample = leaf[:QUICK_IMAGES] if quick else leaf
    baseline = _model("baseline")
    found = _topk_cases("baseline 32 leaf", baseline, sample, "relu3", 64, repetitions, scratch, ray)
    photos = list_images(SHARED_DATA / "photos") if (SHARED_DATA / "photos").is_dir() else []
    if not quick and photos:
        found += _topk_cases("efficientnet_lite0 photos", _model("efficientnet_lite0"), photos, "blocks.3", 16,
                             repetitions, scratch, ray)
    if not quick:  # a scan long enough that Ray's fixed start no longer dominates
        found += _topk_cases(f"baseline 32 leaf variants ({LEAF_VARIANTS})", baseline,
                             LeafVariants(leaf, LEAF_VARIANTS), "relu3", 64, repetitions, scratch, ray,
                             note=" made from the leaf images by flips, 90-degree rotations and crops")
    # quick: the scaling of 2 workers is measured on the top-k scan only (each Ray job costs its fixed start)
    folder = linked_folder(sample, LEAF, scratch) if quick else LEAF
    found += _cam_cases(baseline, folder, 32, repetitions, scratch, ray, scaling=not quick)
    try:
        yield from found
    finally:
        ray.stop()
