"""Demo section: featuremaps."""

from __future__ import annotations

from pathlib import Path

from convlens.demo.core import DemoContext, DemoSection
from convlens.featuremaps import feature_maps
from convlens.filters import conv_layer_names, filters

# Where `convlens train` may have left the leaf-study baseline (relative to the demo folder, its parent, or
# the working directory); the demo's leaf part runs only when one of them holds a checkpoint.
LEAF_RUN_NAMES = ("leaf-baseline", "runs/leaf-baseline")


def find_leaf_baseline(demo_out: Path) -> Path | None:
    from convlens.models.checkpoint import find_checkpoint

    for base in (demo_out, demo_out.parent, Path.cwd()):
        for name in LEAF_RUN_NAMES:
            if find_checkpoint(base / name) is not None:
                return base / name
    return None


def first_validation_image(run_dir: Path) -> Path | None:
    """The first validation image recorded in a training run's ``split.json``, if it is still there."""
    import json

    try:
        record = json.loads((run_dir / "split.json").read_text())
        path = Path(record["data_dir"]) / record["validation"][0][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    return path if path.is_file() else None


def section(context: DemoContext) -> DemoSection:
    """First-layer filters of the demo model and feature maps of a sample photo (and of a leaf, when a
    trained ``leaf-baseline`` run exists)."""
    import json

    from convlens.models import load_model

    base = context.out / "filters-featuremaps"
    photo = next((p for p in context.photos if p.stem == "chelsea"), context.photos[0])
    maps = feature_maps(context.model, photo, max_channels=32, progress=context.progress)
    folders = [filters(context.model).save(base / "filters"), maps.save(base / "featuremaps")]
    text = (f"`convlens filters {context.model.spec}` draws the first convolution's RGB kernels; `convlens "
            f"featuremaps {context.model.spec} {photo.name} --max 32` shows the top-3 "
            "predictions above one row of the strongest channels at the end of each stage (early rows follow "
            "edges and outlines, late rows are coarse object parts), then the 32 strongest maps of the first "
            "stage.")
    run_dir = find_leaf_baseline(context.out)
    leaf = first_validation_image(run_dir) if run_dir is not None else None
    if run_dir is not None and leaf is not None:
        leaf_model = load_model(run_dir, device=str(context.model.device))
        folders += [filters(leaf_model, conv_layer_names(leaf_model)[:2]).save(base / "leaf-filters"),
                    feature_maps(leaf_model, leaf, progress=context.progress).save(base / "leaf-featuremaps")]
        text += f" The trained leaf baseline ({run_dir.name}): its filters and the feature maps of {leaf.name}."
    figures = []
    for folder in folders:
        names = json.loads((folder / "summary.json").read_text())["figures"]
        figures += [str((folder / name).relative_to(context.out)) for name in names[:2]]
    return DemoSection("Filters and feature maps", text, figures)
