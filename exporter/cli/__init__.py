"""The ``flexiexport`` command line (``exporter.cli:main``)."""

from exporter.cli.app import main

__all__ = ["main"]
