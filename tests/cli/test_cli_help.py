"""``--help`` stays fast: no torch, timm, onnx, onnxruntime or tensorrt imported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "timm", "onnx", "onnxruntime", "tensorrt", "numpy")
PROBE = """
import json, sys
from exporter.cli.app import main
try:
    main({args!r})
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})))
"""


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--version"]]
    + [[cmd, "--help"] for cmd in ("build", "resize", "inspect", "validate", "bench", "evaluate", "engine")]
    + [[cmd, "--help"] for cmd in ("profiles", "triton", "serve")],
)
def test_help_imports_no_heavy_library(args):
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=args, heavy=HEAVY)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == [], lines[-1]
    assert "Usage" in done.stdout or "version" in done.stdout


def test_package_import_is_lazy_but_names_resolve():
    code = (
        "import sys, exporter; assert 'torch' not in sys.modules; "
        "f = exporter.pi_resize_patch_embed; assert 'torch' in sys.modules; print(f.__module__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "exporter.build.resize"


def test_profiles_command_imports_no_heavy_library():
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=["profiles"], heavy=HEAVY)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
