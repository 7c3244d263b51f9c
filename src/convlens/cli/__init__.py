"""``convlens`` command line. Errors are one line on stderr and a non-zero exit; ``--debug`` shows tracebacks.

This module stays light (no torch, no typer at import): ``main`` installs the Ctrl-C and SIGTERM handling first
and imports the application afterwards, so an interrupt during the seconds of importing is one line too.
Exit codes: 0 success, 2 a usage or input error (``error: ...``), 1 an unexpected error, 130 Ctrl-C,
143 SIGTERM.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

# Each module registers its commands on ``convlens.cli.app.app``.
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
    "convlens.cli.faithfulness",
    "convlens.cli.attribution",
]

_signal_received: list[int] = []


def _interrupt(signum, frame) -> None:
    """SIGINT and SIGTERM both unwind as KeyboardInterrupt, so every ``finally`` and output folder cleans up."""
    if _signal_received:  # a second Ctrl-C while unwinding must not break the cleanup of the first
        return
    _signal_received.append(signum)
    raise KeyboardInterrupt


def _exit_at_once(signum, frame) -> None:
    """While only importing, nothing is written yet: leave now. A KeyboardInterrupt raised inside a third-party
    import can be swallowed by its ``except:`` (the command then ran on as if never interrupted) or leave
    CPython's "unhandled interrupt" flag set (exit status -2): exiting here avoids both."""
    _signal_received.append(signum)
    code = _interrupted()
    sys.stderr.flush()
    os._exit(code)


def _install_signal_handlers(handler) -> None:
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def load_app():
    """The typer application with every command module registered (the heavy imports)."""
    from convlens.cli.app import app

    for name in COMMAND_MODULES:
        importlib.import_module(name)
    # importing the submodule convlens.cli.app bound the name ``app`` here to that module: bind the application
    globals()["app"] = app
    return app


def __getattr__(name: str):
    if name == "app":  # ``from convlens.cli import app`` keeps working
        return load_app()
    raise AttributeError(f"module 'convlens.cli' has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    import warnings

    _signal_received.clear()
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    _install_signal_handlers(_exit_at_once)
    show = warnings.showwarning
    warnings.showwarning = _warning_line
    try:
        sys.exit(_run(list(sys.argv[1:] if argv is None else argv)))
    finally:
        warnings.showwarning = show
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A library's Python warning as one line (not the file, line and source that Python shows)."""
    text = " ".join(str(message).split())
    print(f"warning: {category.__name__}: {text[:300]}", file=sys.stderr)


def _run(args: list[str]) -> int:
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        from convlens.errors import ConvlensError

        app = load_app()
        _install_signal_handlers(_interrupt)  # from here on, unwind so output folders clean up
        code = app(args=args, prog_name="convlens", standalone_mode=False)
        code = code if isinstance(code, int) else 0
        if code == 130:  # typer turns KeyboardInterrupt inside a command into exit code 130
            return _interrupted()
        return code
    except KeyboardInterrupt:
        return _interrupted()
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - never a traceback unless asked
        if _signal_received:
            # The interrupt came first; what failed after it is its consequence (an import cut short, e.g.
            # numpy's "cannot load module more than once per process"): report the interrupt.
            return _interrupted()
        if debug:
            raise
        return _report(exc, ConvlensError)


def _kind(exc: BaseException, name: str) -> bool:
    """Whether ``exc`` is click's ``name`` exception, from plain click or the copy recent typer vendors."""
    return any(cls.__name__ == name for cls in type(exc).__mro__)


def _report(exc: Exception, ConvlensError) -> int:
    if _kind(exc, "NoArgsIsHelpError"):  # ``convlens`` or ``convlens data`` alone: the help, as click shows it
        print(exc.ctx.get_help())
        return 2
    if _kind(exc, "Abort"):
        return _interrupted()
    if _kind(exc, "ClickException"):
        ctx = getattr(exc, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None and _kind(exc, "UsageError") else ""
        _error_line(f"{exc.format_message()}{hint}")
        return 2
    if isinstance(exc, ConvlensError):
        _error_line(str(exc))
        return 2
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    _error_line(f"{exc.__class__.__name__}: {message} (rerun with --debug for the traceback)")
    return 1


def _error_line(message: str) -> None:
    """The one way every command reports an error: ``error: `` and one line."""
    print("error: " + " ".join(message.split()), file=sys.stderr)


def _interrupted() -> int:
    if signal.SIGTERM in _signal_received:
        print("terminated", file=sys.stderr)
        return 143
    print("interrupted", file=sys.stderr)
    return 130


__all__ = ["COMMAND_MODULES", "load_app", "main"]
