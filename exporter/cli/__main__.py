"""``python -m exporter.cli``: the same as the ``flexiexport`` command."""

from exporter.cli.app import main

main()
