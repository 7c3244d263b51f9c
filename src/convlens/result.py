"""One result protocol for every method.

A method's top-level function (``convlens.cam``, ``convlens.occlusion`` ...) returns a frozen dataclass that
subclasses ``Result``. It answers four questions the same way everywhere:

- ``arrays()``: the numbers, as a dict of numpy arrays; always holds ``input`` (the preprocessed model input);
- ``summary()``: a JSON-able dict (model, layers, targets, parameters, ``compute_seconds``);
- ``figures()``: named matplotlib figures (the name is the PNG's file name without ``.png``);
- ``save(out)``: the standard output folder (PNGs, ``arrays.npz``, ``summary.json``), written atomically.

The CLI does nothing but parse options, call the function and ``save`` the result; the report and the web app
render the same three views. A subclass sets ``command`` (the CLI command that writes it) and implements the
three views; ``save`` is shared.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from convlens.output import output_dir

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class Result:
    """Base of every method's result (subclasses are ``@dataclass(frozen=True)``)."""

    command: ClassVar[str] = ""

    def arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        raise NotImplementedError

    def figures(self) -> dict[str, Figure]:
        raise NotImplementedError

    def iter_figures(self) -> Iterator[tuple[str, Figure]]:
        """``figures()`` one at a time; results with many figures override it to draw each only when asked."""
        yield from self.figures().items()

    def save(self, out: str | Path, *, force: bool = False) -> Path:
        """Write the standard output folder to ``out``, replacing an earlier convlens output there (a folder
        holding anything else only with ``force``; see ``convlens.output``).

        Built under a temporary name and renamed into place, so a failure leaves nothing half-written. When the
        summary's model has random weights, every figure carries a visible "UNTRAINED (random weights)" note.
        """
        summary = dict(self.summary())
        seconds = float(summary.pop("compute_seconds", 0.0))
        with output_dir(out, self.command or summary.get("command", "result"), force=force) as folder:
            folder.compute_seconds = seconds
            folder.update(**summary)  # first: a model with random weights gets every figure marked UNTRAINED
            folder.add_arrays(**self.arrays())
            for name, figure in self.iter_figures():
                folder.save_figure(figure, name)
        return Path(out)
