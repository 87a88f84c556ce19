"""The ``flexiexport`` command line: thin Click commands over the library.

One module per command (``exporter/cli/<command>.py``), the options they share in ``params``,
every table and line they print in ``render``, and the group in ``group``: the one place that
turns exceptions into exit codes and text:
0 ok · 1 internal error · 2 bad usage or input · 3 validation failed · 4 environment lacks a need.
Heavy libraries (torch, timm, onnx, onnxruntime, tensorrt) are imported inside the commands
that need them, so ``flexiexport --help`` and ``flexiexport CMD --help`` stay fast.
"""

from __future__ import annotations

# Each command module registers its command on the group when it is imported.
from exporter.cli import (  # noqa: F401
    bench,
    build,
    engine,
    evaluate,
    inspect,
    predict,
    profiles,
    resize,
    serve,
    triton,
    validate,
)
from exporter.cli.group import cli, install_signal_handlers


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    install_signal_handlers()
    cli.main(args=argv, prog_name="flexiexport")


if __name__ == "__main__":
    main()
