"""The wheel carries everything a non-editable install needs: the demo, its digits, the profiles."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
from exporter.source.demo import DEMO_WEIGHTS
from exporter.tensorrt.profile import available_profiles, load_profile
assert DEMO_WEIGHTS.is_file(), DEMO_WEIGHTS
print(DEMO_WEIGHTS.parent.parent.parent == __import__("pathlib").Path.cwd() / "site")
print(sorted(p.stem for p in available_profiles()), load_profile("l4").precision)
"""


def test_the_wheel_ships_the_demo_and_the_profiles(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path / "dist")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("flexiexport-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path / "site")
    # Run from the unpacked wheel, away from the source tree.
    probe = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.splitlines()
    assert lines[0] == "True"  # the unpacked copy, not the checkout
    shipped = "'a100', 'gpu-fp16', 'h100', 'jetson-agx-orin', 'jetson-orin-nano', 'l4'"
    assert lines[1] == f"[{shipped}, 'rtx-ada', 'rtx-ampere', 'rtx-blackwell', 't4'] fp16"
