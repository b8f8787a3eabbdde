"""``python -m aigos.cli``, as ``aigos``."""

from aigos.cli import main

main()
