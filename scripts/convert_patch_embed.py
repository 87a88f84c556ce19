"""The seed project's conversion script, kept command-line compatible.

    python scripts/convert_patch_embed.py -i vit-16.pt -o vit-20.pt -n patch_embed.proj.weight -ps 20
    python scripts/convert_patch_embed.py -i vit-16.pt -o vit-10-15.pt -ps 10 15

Same as ``flexiexport resize`` (which adds --img-size to resample pos_embed too).
"""

from __future__ import annotations

import sys

from exporter.cli.app import main

if __name__ == "__main__":
    main(["resize", *sys.argv[1:]])
