"""``convlens demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convlens.cli.app import app
from convlens.cli.common import ForceOpt, console
from convlens.output import check_out


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo (an earlier demo there is replaced; "
                                                    "anything else needs --force).")] = Path("convlens-demo"),
    model: Annotated[str, typer.Option("--model", help="Model spec.")] = "efficientnet_lite0",
    force: ForceOpt = False,
) -> None:
    """The HTML report of the default model on bundled photos (and of the leaf models where available)."""
    check_out(out, force=force)  # before the imports and the model: a refusal costs nothing
    from convlens.demo import run_demo

    console.print(f"convlens demo on {model}, writing {out}/")
    index = run_demo(out, model, log=console.print, force=force)
    console.print(f"open [bold]{index.resolve().as_uri()}[/bold]")
    print(index.resolve().as_uri())
