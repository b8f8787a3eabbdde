"""``python -m aigos`` runs the CLI."""

from aigos.cli import main

main()
