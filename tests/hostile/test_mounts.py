"""Issue 22, class 9: real mounts and a real full disk.

A bind mount of a folder on the same file system (docker's volumes) is a mount point that
``os.path.ismount`` does not see; ``/proc/self/mountinfo`` does. A small tmpfs, filled, is a
full disk. Each test skips with the reason where this process may not mount.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import TWO_VARIANTS, built, refused, run_cli


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built(tmp_path_factory, *TWO_VARIANTS).path


@contextmanager
def mounted(root: Path, *args: str) -> Iterator[None]:
    """``mount ARGS`` for the block (skips the test where mounting is not permitted); after it,
    every mount point under ``root`` is unmounted, wherever a command under test moved it."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount is not permitted here: {done.stderr.strip()}")
    try:
        yield
    finally:
        for point in sorted(mounts_under(root), key=len, reverse=True):
            subprocess.run(["umount", point], check=True)


def mounts_under(root: Path) -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split(" ")[4]) for line in lines]
    return [p for p in points if Path(p).is_relative_to(os.path.realpath(root))]


def test_a_bind_mount_is_refused_as_out_before_any_work(tmp_path: Path) -> None:
    """Same file system, so ``os.path.ismount`` says no; mountinfo (``\\040`` for the space) says yes."""
    source, out = tmp_path / "volume", tmp_path / "my out"
    source.mkdir()
    out.mkdir()
    with mounted(tmp_path, "--bind", str(source), str(out)):
        assert not os.path.ismount(out)
        result = run_cli("build", "--patch-sizes", "32", "--out", str(out), "--quiet")
        refused(result, "is a mount point", "give a folder inside it")
        assert list(out.iterdir()) == [] and not list(tmp_path.glob(".my out.tmp-*"))
        inside = out / "bundle"  # what the message suggests works
        assert run_cli("build", "--patch-sizes", "32", "--out", str(inside), "--quiet").exit_code == 0
    assert (source / "bundle" / "manifest.json").is_file()


def test_a_bundle_holding_a_mount_point_is_not_replaced(tmp_path: Path, demo: Path) -> None:
    """``--force`` onto a bundle with a volume mounted inside it: removing the old bundle would
    reach into the volume."""
    out, volume = tmp_path / "demo", tmp_path / "volume"
    shutil.copytree(demo, out)
    volume.mkdir()
    (out / "onnx" / "cache").mkdir()
    with mounted(tmp_path, "--bind", str(volume), str(out / "onnx" / "cache")):
        result = run_cli("build", "--patch-sizes", "32", "--out", str(out), "--force", "--quiet")
        refused(result, "holds a mount point", "cache")


def test_a_full_disk_while_writing_the_plot_is_one_error_line(tmp_path: Path, demo: Path) -> None:
    """eval.json fits, tradeoff.png does not: exit 2 'no space left on device', never exit 0."""
    disk = tmp_path / "disk"
    disk.mkdir()
    with mounted(tmp_path, "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)):
        bundle = disk / "b"
        shutil.copytree(demo, bundle)
        stat = os.statvfs(disk)
        free = stat.f_bavail * stat.f_frsize
        (disk / "filler").write_bytes(b"\0" * (free - 3 * stat.f_frsize))  # room for eval.json, not a PNG
        result = run_cli("evaluate", str(bundle), "--limit", "8", "--quiet")
        line = refused(result, "no space left on device", "tradeoff.png")
        assert "None" not in result.stdout, line
        assert not (bundle / "tradeoff.png").exists() and not list(bundle.glob(".tradeoff.png.*"))
