"""``python -m convlens.cli``: the same as the ``convlens`` console script."""

from convlens.cli import main

main()
