"""``convlens demo``: every capability on the offline default model and bundled sample photos.

The demo imports the methods; no method imports the demo. Each section is a module of this package with a
``section(context) -> DemoSection`` function, listed in ``SECTIONS`` in the order the page shows them.
"""

from __future__ import annotations

from convlens.demo import cam, featuremaps, occlusion, training, zeiler
from convlens.demo.core import (
    SAMPLE_PHOTOS,
    DemoContext,
    DemoSection,
    predictions_section,
    render_index,
    sample_photos,
)
from convlens.demo.core import run_demo as _run_demo

SECTIONS = [
    predictions_section,
    featuremaps.section,
    zeiler.section,
    training.section,
    cam.section,
    occlusion.section,
]


def run_demo(*args, **kwargs):
    """Write the demo folder (``convlens-demo`` by default) and return its ``index.html``."""
    return _run_demo(*args, sections=SECTIONS, **kwargs)


__all__ = ["SAMPLE_PHOTOS", "SECTIONS", "DemoContext", "DemoSection", "render_index", "run_demo", "sample_photos"]
