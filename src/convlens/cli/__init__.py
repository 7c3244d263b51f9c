"""``convlens`` command line. Errors are one line on stderr and a non-zero exit; ``--debug`` shows tracebacks."""

from __future__ import annotations

import importlib
import sys

from convlens.cli.app import app
from convlens.errors import ConvlensError

# Each module registers its commands on ``app``.
COMMAND_MODULES = [
    "convlens.cli.basic",
    "convlens.cli.cam",
    "convlens.cli.convert",
    "convlens.cli.demo",
    "convlens.cli.report",
    "convlens.cli.serve",
    "convlens.cli.featureviz",
    "convlens.cli.sensitivity",
    "convlens.cli.train",
    "convlens.cli.visualize",
    "convlens.cli.zeiler",
]

for _name in COMMAND_MODULES:
    importlib.import_module(_name)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        app(args=args, prog_name="convlens")
    except SystemExit:
        raise
    except ConvlensError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - never a traceback unless asked
        if debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"error: {exc.__class__.__name__}: {message} (rerun with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)


__all__ = ["app", "main"]
