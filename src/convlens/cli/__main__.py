"""``python -m convlens.cli``: the same as the ``convlens`` command."""

from convlens.cli import main

main()
