"""Issue 22, class 1: races on ``--out`` lose nothing.

Real builds in real processes: a build holds ``--out``'s lock from its destination check to the
end of its swap, judges the destination again at the swap, and a reader whose bundle is swapped
out under it says so instead of judging a mix of two bundles. The window is hit by waiting for
the build's staging folder (``.NAME.tmp-PID-*``) to appear: the build is then past its check and
before its swap.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import Result

import exporter

from conftest import TWO_VARIANTS, built, refused, run_cli

REPO = Path(exporter.__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def two_variants(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built(tmp_path_factory, *TWO_VARIANTS).path


def start_build(out: Path, *extra: str) -> subprocess.Popen[str]:
    """``flexiexport build`` of the demo at patch 32 in its own process (this worktree's code)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "exporter.cli", "build", "--patch-sizes", "32", "--out", str(out), "--quiet"]
    return subprocess.Popen([*command, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_staging(out: Path, proc: subprocess.Popen[str] | BuildThread, timeout: float = 60) -> Path:
    """The build's staging folder, once it exists (the build is then between check and swap)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(out.parent.glob(f".{out.name}.tmp-{proc.pid}-*"))
        if found:
            return found[0]
        assert proc.poll() is None, "the build ended before its staging folder was seen"
        time.sleep(0.01)
    raise AssertionError("the build never made its staging folder")


class BuildThread(threading.Thread):
    """The CLI's ``build`` of the demo at patch 32, run in this process on another thread (the
    main thread only touches files meanwhile)."""

    def __init__(self, out: Path, *extra: str) -> None:
        super().__init__(daemon=True)
        self.args = ("build", "--patch-sizes", "32", "--out", str(out), "--quiet", *extra)
        self.pid = os.getpid()
        self.result: Result | None = None
        self.start()

    def run(self) -> None:
        self.result = run_cli(*self.args)

    def poll(self) -> int | None:
        return None if self.is_alive() else 0

    def finish(self) -> Result:
        self.join(120)
        assert self.result is not None
        return self.result


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_a_second_build_into_the_same_out_is_refused_naming_the_first(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    first = start_build(out)
    wait_for_staging(out, first)
    second = run_cli("build", "--patch-sizes", "16", "--out", str(out), "--quiet")
    refused(second, "being written by another flexiexport", f"PID {first.pid}")
    if not out.exists():  # a reader meanwhile hears who is writing it
        refused(run_cli("inspect", str(out)), "does not exist", f"PID {first.pid} is writing it", "retry")
    code, err = finish(first)
    assert code == 0, err
    assert [v["label"] for v in json.loads((out / "manifest.json").read_text())["variants"]] == ["p32"]
    assert not (tmp_path / ".demo.lock").exists()  # the holder removes its lock file


def test_a_users_folder_that_appears_during_a_build_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    build = BuildThread(out)
    wait_for_staging(out, build)
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = refused(build.finish(), "not a flexiexport bundle", "changed during the run")
    assert "notes.txt" in line or "refusing to replace" in line, line
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no staging left behind


def test_force_replaces_only_what_it_judged_replaceable(tmp_path: Path, two_variants: Path) -> None:
    """A file the user drops into the old bundle during ``build --force`` is not deleted with it."""
    out = tmp_path / "demo"
    shutil.copytree(two_variants, out)
    build = BuildThread(out, "--force")
    wait_for_staging(out, build)
    (out / "notes.txt").write_text("mine")
    refused(build.finish(), "notes.txt", "changed during the run")
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "onnx" / "model_p16.onnx").is_file()  # the old bundle, whole


def test_a_reader_whose_bundle_is_replaced_says_retry_not_mismatch(tmp_path: Path, two_variants: Path) -> None:
    """validate's check of a bundle opened before a ``build --force`` swapped a new one in: no
    false "sha256 MISMATCH" (exit 3) on a sound bundle, but "being replaced ... retry"."""
    from exporter.bundle.door import Bundle
    from exporter.core.errors import BundleReplaced
    from exporter.measure.validate import check_variant

    out = tmp_path / "demo"
    shutil.copytree(two_variants, out)
    opened = Bundle.open(out)
    rebuilt = run_cli("build", "--patch-sizes", "32", "--out", str(out), "--force", "--quiet")
    assert rebuilt.exit_code == 0, rebuilt.stderr
    p16 = next(r for r in opened.manifest.variants if r.label == "p16")
    with pytest.raises(BundleReplaced, match="being replaced.*retry"):
        check_variant(opened, p16)
    assert run_cli("validate", str(out), "--quiet").exit_code == 0  # the new bundle, read whole


def test_triton_out_shares_the_lock(tmp_path: Path, two_variants: Path) -> None:
    """``triton --out`` takes the same lock: a repository being written is not written twice."""
    from exporter.core.locks import destination_lock

    repo = tmp_path / "repo"
    with destination_lock(repo):
        result = run_cli("triton", str(two_variants), "--out", str(repo))
    refused(result, "being written by another flexiexport", f"PID {os.getpid()}")
    assert not repo.exists()
    assert run_cli("triton", str(two_variants), "--out", str(repo)).exit_code == 0


@pytest.mark.parametrize("kind", ["fifo", "symlink", "folder"])
def test_a_lock_path_that_is_not_a_file_is_one_error_line(tmp_path: Path, kind: str) -> None:
    """Whatever sits at ``.NAME.lock`` (a FIFO: never opened for a blocking read; a link: never
    followed) is refused in one line, and nothing is built."""
    lock, target = tmp_path / ".demo.lock", tmp_path / "elsewhere"
    if kind == "fifo":
        os.mkfifo(lock)
    elif kind == "symlink":
        target.write_text("keep")
        lock.symlink_to(target)
    else:
        lock.mkdir()
    result = run_cli("build", "--patch-sizes", "32", "--out", str(tmp_path / "demo"), "--quiet")
    refused(result, ".demo.lock")
    assert not (tmp_path / "demo").exists()
    assert kind != "symlink" or target.read_text() == "keep"
