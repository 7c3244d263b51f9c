"""``convlens demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convlens.cli.app import app
from convlens.cli.common import console


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo (an earlier demo there is replaced).")]
    = Path("convlens-demo"),
    model: Annotated[str, typer.Option("--model", help="Model spec.")] = "efficientnet_lite0",
) -> None:
    """The HTML report of the default model on bundled photos (and of the leaf models where available)."""
    from convlens.demo import run_demo

    console.print(f"convlens demo on {model}, writing {out}/")
    index = run_demo(out, model, log=console.print)
    console.print(f"open [bold]{index.resolve().as_uri()}[/bold]")
    print(index.resolve().as_uri())
