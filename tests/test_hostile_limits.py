"""Hostile input (issue #11): sizes, counts, files and outputs that must end in exit 2 with one
``error:`` line, found before any heavy work, never in an internal error (exit 1) or a crash."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from exporter.errors import UsageError
from exporter.limits import available_cores

from conftest import one_line_error, run_cli, tiny_model

GB = 1e9


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory):
    """The demo bundle, built once with ``--threads 100000`` (clamped to the cores, not a crash)."""
    out = tmp_path_factory.mktemp("bundles") / "demo"
    result = run_cli("build", "--patch-sizes", "8", "16", "32", "--out", str(out), "--threads", "100000")
    assert result.exit_code == 0, result.output + result.stderr
    return out, result


@pytest.fixture()
def bundle(demo_build, tmp_path) -> Path:
    """A private copy of the demo bundle, free to tamper with."""
    copy = tmp_path / "demo"
    shutil.copytree(demo_build[0], copy)
    return copy


def edit_manifest(bundle: Path, edit) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def tiny_state(tmp_path_factory) -> dict[str, torch.Tensor]:
    return tiny_model(num_classes=10).state_dict()


def weights_with_config(folder: Path, state: dict[str, torch.Tensor], config: object) -> Path:
    """``w.pt`` with ``w.json`` beside it holding ``config`` (any JSON, or raw text)."""
    path = folder / "w.pt"
    torch.save(state, path)
    text = config if isinstance(config, str) else json.dumps(config)
    path.with_suffix(".json").write_text(text)
    return path


# 2. --threads ---------------------------------------------------------------------------------


def test_threads_above_the_cores_are_clamped_with_a_warning(demo_build, caplog):
    from exporter.pipeline import BuildOptions

    cores = available_cores()
    assert json.loads((demo_build[0] / "manifest.json").read_text())["options"]["threads"] == cores
    with caplog.at_level("WARNING", logger="exporter.limits"):
        assert BuildOptions(patch_sizes=((16, 16),), threads=100000).threads == cores
    assert f"--threads 100000 is more than the {cores} cores available; using {cores}" in caplog.text


def test_bench_threads_are_clamped_and_below_one_refused():
    from exporter.bench import BenchOptions

    assert BenchOptions(threads=100000).thread_count == available_cores()
    with pytest.raises(UsageError, match="--threads must be at least 1, got 0"):
        BenchOptions(threads=0)


def test_threads_below_one_is_usage_error(tmp_path):
    result = run_cli("build", "-p", "16", "--threads", "0", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "--threads must be at least 1, got 0" in one_line_error(result)
