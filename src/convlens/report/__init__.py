"""``convlens.report(model, images)``: a static HTML report that works offline from ``file://``.

``index.html`` (model card, images with their top-3 predictions), a page per image (every CAM method, the
projections of its strongest units, occlusion, invariance, faithfulness where available), a page per layer
(filters, each image's feature maps, units ranked) and per unit (``layers/LAYER/units/N.html``: filter, top-k
patches beside their projections, histogram, feature visualization where asked). One forward pass per batch of
images feeds the predictions, the feature maps, the top-k tables and the histograms. See docs/report.md.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from convlens.models.classifier import ImageClassifier
from convlens.progress import ProgressLike, track
from convlens.report.collect import Collected, FeatureVizOptions, Options, collect
from convlens.report.collect import arrays as collected_arrays
from convlens.result import Result


@dataclass(frozen=True)
class Report(Result):
    """What ``convlens.report`` computed; ``save(out)`` writes the HTML folder (``out/index.html``)."""

    command: ClassVar[str] = "report"
    collected: Collected
    command_line: str = "convlens.report(...)"

    def arrays(self) -> dict[str, np.ndarray]:
        """``input``, ``probabilities``, per layer ``mean_activation/LAYER`` (images x units), ``top_values/LAYER``
        and ``top_images/LAYER`` (units x k), and ``cam/METHOD`` (images x H x W)."""
        return collected_arrays(self.collected)

    def summary(self) -> dict[str, Any]:
        c = self.collected
        notes = {method: cam for method, cam in c.cams.items() if isinstance(cam, str)}
        if isinstance(c.faithfulness, str):
            notes["faithfulness"] = c.faithfulness
        return {
            "command": "report", "model": c.model.describe(), "inputs": [str(i.path) for i in c.images],
            "pages": {"images": [f"images/{i.slug}.html" for i in c.images],
                      "layers": {name: f"layers/{name}/index.html" for name in c.layers},
                      "units": {name: units for name, units in c.unit_pages.items()}},
            "predictions": [[p.to_dict() for p in i.predictions] for i in c.images],
            "layers": c.layers, "cam_layer": c.cam_layer, "projection_layer": c.projection_layer,
            "parameters": {key: dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
                           for key, value in vars(c.options).items()},
            "feature_viz": {name: fv if isinstance(fv, str) else {"units": list(fv.units),
                                                                  "flagged_units": fv.summary()["flagged_units"]}
                            for name, fv in c.feature_viz.items()},
            "notes": notes, "seconds": c.seconds, "compute_seconds": sum(c.seconds.values()),
        }

    def figures(self) -> dict:
        """The figures the methods draw themselves (occlusion, invariance), per image."""
        found = {}
        for store in (self.collected.occlusions, self.collected.invariances):
            for index, result in store.items():
                if not isinstance(result, str):
                    found.update({f"{self.collected.images[index].slug}-{name}": figure
                                  for name, figure in result.figures().items()})
        return found

    def save(self, out: str | Path = "convlens-report", *, force: bool = False,
             progress: ProgressLike = False) -> Path:
        """Write the report folder (replacing an earlier convlens output there, atomically); returns ``out``."""
        from convlens.output import output_dir
        from convlens.report import layer_pages, pages
        from convlens.report.assets import CSS, JS

        c = self.collected
        summary = self.summary()
        with output_dir(out, "report", force=force) as folder:
            folder.compute_seconds = summary.pop("compute_seconds")
            folder.file("assets/report.css").write_text(CSS)
            folder.file("assets/report.js").write_text(JS)
            pages.write_index(c, folder.file, self.command_line)
            jobs = [("image", entry) for entry in c.images] + [("layer", name) for name in c.layers] + [
                ("unit", (name, unit)) for name in c.layers for unit in c.unit_pages[name]]
            for kind, item in track(jobs, len(jobs), "report: writing pages", progress):
                if kind == "image":
                    pages.write_image_page(c, item, folder.file)
                elif kind == "layer":
                    layer_pages.write_layer_page(c, item, folder.file)
                else:
                    layer_pages.write_unit_page(c, *item, folder.file)
            folder.add_arrays(**self.arrays())
            folder.update(**summary)
        return Path(out)


def report(model: ImageClassifier | str, images, out: str | Path | None = None, *, layers: list[str] | None = None,
           units: int | None = 16,
           k: int = 9, methods: list[str] | None = None, cam_layer: str | None = None, details: int = 8,
           rule: str = "auto", feature_viz: bool | FeatureVizOptions = False, batch_size: int = 32,
           progress: ProgressLike = False, ray: str | None = None, workers: int = 1,
           gpus_per_worker: float = 0.0, cpus_per_worker: float | None = None) -> Report:
    """Compute everything the report shows for ``images`` (files or folders); ``.save(out)`` writes it (at once
    when ``out`` is given).

    ``layers``: the layers with pages (default: the end of each stage). ``units``: unit pages per layer, the
    strongest by mean activation (None: every unit). ``k``: top-k images per unit. ``methods``: CAM methods
    (default the eight classic ones) at ``cam_layer`` (default the last spatial convolution). ``details``: how
    many images get the long parts (occlusion, invariance, projections). ``rule``: deconv rule of the unit pages'
    projections (``auto``: guided on strided networks, deconvnet where only pooling downsamples).
    ``feature_viz``: a feature visualization per unit page (long); a ``FeatureVizOptions`` chooses layers, how many
    units, steps, size and a diversity set. ``ray``: ``local``, ``auto`` or an address runs the shared pass over
    the images on Ray (``workers`` actors, ``gpus_per_worker`` each; the same report).
    """
    from convlens.errors import ConvlensError

    if isinstance(model, str):
        from convlens.models import load_model

        model = load_model(model)
    if k < 1 or (units is not None and units < 1) or details < 0 or batch_size < 1:
        raise ConvlensError("k, units and batch_size must be at least 1, details at least 0")
    from convlens.report import compute

    compute.check_rule(rule)
    feature_viz = _feature_viz_plan(feature_viz, layers or compute.default_layers(model))
    options = Options(tuple(layers) if layers else None, units, k, tuple(methods) if methods else None, cam_layer,
                      details, rule, feature_viz, batch_size)
    command = " ".join(shlex.quote(a) for a in ["convlens", *sys.argv[1:]]) if Path(sys.argv[0]).name in (
        "convlens", "__main__.py") else "convlens.report(...)"
    ray_options = None
    if ray is not None:
        from convlens.distributed import RayOptions

        ray_options = RayOptions(ray, workers, gpus_per_worker, cpus_per_worker)
    result = Report(collect(model, images, options, progress, ray_options), command)
    if out is not None:
        result.save(out, progress=progress)
    return result


def _feature_viz_plan(feature_viz: bool | FeatureVizOptions, layers: list[str]) -> FeatureVizOptions | None:
    """``report``'s ``feature_viz`` as options (None: none), its layers among the report's, checked before work."""
    from convlens.errors import ConvlensError

    plan = FeatureVizOptions() if feature_viz is True else feature_viz or None
    if plan is None:
        return None
    if plan.steps < 1 or plan.diversity < 1 or (plan.units is not None and plan.units < 1):
        raise ConvlensError("feature visualization: steps, diversity and units must be at least 1")
    if plan.layers is not None and set(plan.layers) - set(layers):
        missing = sorted(set(plan.layers) - set(layers))
        raise ConvlensError(f"feature visualization layer {missing[0]!r} has no pages in this report: add it to "
                            "the report's layers")
    return plan


__all__ = ["FeatureVizOptions", "Report", "report"]

from convlens._callable import callable_package  # noqa: E402

callable_package(__name__, "report")
