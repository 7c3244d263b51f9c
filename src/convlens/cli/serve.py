"""``convlens serve``: the local web explorer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convlens.cli.app import app
from convlens.cli.common import ClassesOpt, DeviceOpt, ModelArg, PreprocessOpt, WeightsOpt, console, open_model


@app.command("serve")
def serve_command(
    model: ModelArg,
    images: Annotated[list[Path] | None, typer.Argument(metavar="[IMAGE_OR_FOLDER...]",
                                                        help="Images to start with (more can be uploaded).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind (default: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option("--workers", help="Computations at once (one model copy each).")] = 1,
    queue: Annotated[int, typer.Option("--queue", help="Requests that may wait; beyond them: 503.")] = 8,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="Largest upload accepted.")] = 20.0,
    weights: WeightsOpt = None,
    classes: ClassesOpt = None,
    preprocess: PreprocessOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """A local web app: upload images, choose layer, unit, method and target; JSON API under /api."""
    from convlens.data.images import expand_image_args
    from convlens.web import LOCAL_HOST, serve

    if host not in (LOCAL_HOST, "localhost", "::1"):
        console.print(f"[bold yellow]warning:[/bold yellow] listening on {host}: anyone who can reach this address "
                      "can upload images and run the model on this machine")
    classifier = open_model(model, weights, device, classes, preprocess)
    paths = expand_image_args(images) if images else []
    console.print(f"convlens serve: {classifier.spec} on http://{host}:{port}/ (API docs at /docs); Ctrl-C stops")
    serve(classifier, paths, host=host, port=port, workers=workers, queue=queue, max_upload_mb=max_upload_mb)
