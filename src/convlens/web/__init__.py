"""``convlens serve``: a local web app over one model (FastAPI + uvicorn).

Upload an image (drag and drop), choose a layer, a unit, a method and a target, and see the result; the same
report pages as ``convlens report``, built on demand under ``/report/``; a JSON API under ``/api`` (documented at
``/docs``) returning what a result's ``arrays()`` and ``summary()`` hold. Computation runs on a pool of worker
threads (one model copy each) behind a bounded queue (503 beyond it); results are cached by the content hash of
image + model + parameters; uploads are limited to 20 MB and 100 megapixels and checked by content.
"""

from __future__ import annotations

import logging
from pathlib import Path

from convlens.models.classifier import ImageClassifier
from convlens.web.app import create_app

LOCAL_HOST = "127.0.0.1"


def serve(model: ImageClassifier, images: list[Path] | None = None, *, host: str = LOCAL_HOST, port: int = 8000,
          workers: int = 1, queue: int = 8, max_upload_mb: float = 20.0, log_level: str = "info") -> None:
    """Run the app until interrupted (Ctrl-C)."""
    import uvicorn

    app = create_app(model, images, workers=workers, queue=queue, max_upload_bytes=int(max_upload_mb * 2**20))
    logging.getLogger("convlens.web").setLevel(log_level.upper())
    uvicorn.run(app, host=host, port=port, log_level=log_level)


__all__ = ["LOCAL_HOST", "create_app", "serve"]
