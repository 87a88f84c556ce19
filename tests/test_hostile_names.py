"""Names are data, never code or paths (issue #11): hostile names from a checkpoint config, a
profile file, a manifest or a folder stay inside ``bundles/``, never run in a generated script,
never break a Triton config and never reach the terminal as markup or escape codes."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from exporter.manifest import read_manifest
from exporter.names import slug

from conftest import TINY, run_cli, save_with_config, tiny_model

ESC = "\x1b"
HOSTILE = '$(touch PWNED) `touch PWNED` it\'s "quoted"\ntouch PWNED'


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "demo"
    result = run_cli("build", "--patch-sizes", "8", "16", "32", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output + result.stderr
    return out


def copy_of(demo: Path, where: Path) -> Path:
    shutil.copytree(demo, where)
    return where


def tamper(bundle: Path, change) -> None:
    data = json.loads((bundle / "manifest.json").read_text())
    change(data)
    (bundle / "manifest.json").write_text(json.dumps(data))


def pwned(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("PWNED")]


# 1. The bundle's name: from a config beside the weights, --model or the weights' stem.


@pytest.mark.parametrize(
    ("config_name", "stem", "expected"),
    [
        ("OUTSIDE", "w", None),  # an absolute path: tmp_path/outside/evil
        ("../../x", "w", "x"),
        (None, "w [x] $(id)", "w-x-id"),
    ],
)
def test_bundle_name_is_slugged_and_stays_inside_bundles(tmp_path, monkeypatch, caplog, config_name, stem, expected):
    work = tmp_path / "a" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    model = tiny_model(num_classes=3)
    weights = save_with_config(model, tmp_path / f"{stem}.pt", "flexivit_small", **TINY, num_classes=3)
    if config_name is not None:
        config = json.loads(weights.with_suffix(".json").read_text())
        config["name"] = str(tmp_path / "outside" / "evil") if config_name == "OUTSIDE" else config_name
        weights.with_suffix(".json").write_text(json.dumps(config))
    expected = expected or slug(str(tmp_path / "outside" / "evil"))
    with caplog.at_level(logging.WARNING, logger="exporter.load"):
        result = run_cli("build", "--weights", str(weights), "-p", "16", "--parity-samples", "2", "-q")
    assert result.exit_code == 0, result.output + result.stderr
    assert sorted(p.name for p in (work / "bundles").iterdir()) == [expected]
    assert read_manifest(work / "bundles" / expected).name == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", f"{stem}.json", f"{stem}.pt"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["work"]
    assert [r for r in caplog.records if f"'{expected}'" in r.getMessage()], caplog.text
