"""Source parity for timm checkpoints: the demo against timm's own build of its config, weights
alone (inferred, not a failure), a disagreement (exit 3) and manifests from before the check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import build_demo, edit_manifest, one_line_error, run_cli, tiny_model


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return build_demo(tmp_path_factory)


def test_the_demo_is_checked_against_timm_built_from_its_config(demo):
    sp = json.loads((demo / "manifest.json").read_text())["source_parity"]
    assert sp["status"] == "passed" and sp["parity"]["passed"] and sp["parity"]["max_abs"] <= 1e-4
    assert sp["reference"].startswith("timm VisionTransformer(**model_args from the config), strict load")
    # The demo stores a 32x32 kernel and an 8x8 grid: timm loads them unresampled at 256, which no
    # variant of the headline build is, so our PyTorch rebuild is compared there, and says so.
    assert (sp["patch_size"], sp["img_size"], sp["variant"]) == ([32, 32], [256, 256], None)
    assert "our PyTorch rebuild" in sp["candidate"] and "no such variant" in sp["candidate"]
    report = (demo / "report.md").read_text()
    assert "Source parity ✓" in report
    shown = run_cli("inspect", str(demo))
    assert shown.exit_code == 0 and "source parity ✓" in shown.output
    assert " src " in shown.output.splitlines()[7] or "src" in shown.output


def test_weights_alone_are_inferred_not_a_failure(tiny_vit, tmp_path):
    result = run_cli("build", "--weights", str(tiny_vit), "--patch-sizes", "16", "--out", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output + result.stderr
    sp = json.loads((tmp_path / "b" / "manifest.json").read_text())["source_parity"]
    assert sp["status"] == "inferred" and sp["reason"] == "inferred, not independently checked"
    table, line = result.stdout.split("source parity:")
    assert "n/c" in table and line.startswith(" inferred, not independently checked")


def test_a_named_timm_model_is_checked_with_a_strict_load(tiny_flexivit, tmp_path):
    result = run_cli("build", "--weights", str(tiny_flexivit), "--patch-sizes", "16", "--out", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output + result.stderr
    sp = json.loads((tmp_path / "b" / "manifest.json").read_text())["source_parity"]
    assert sp["status"] == "passed" and sp["reference"].startswith("timm flexivit_small(**model_args from the config)")
    assert sp["variant"] == "p16" and sp["candidate"].startswith("onnx/model_p16.onnx")


def test_a_build_that_timm_would_not_make_fails_with_exit_3(tmp_path):
    """A config that leaves the head count to timm (VisionTransformer's default 12) while
    ``--num-heads 4`` builds another model: every variant passes against our rebuild, and source
    parity shows that it is not the model timm builds from that config."""
    path = tmp_path / "w.pt"
    torch.save(
        tiny_model("vit_base_patch16_224", embed_dim=96, num_heads=4, num_classes=5, img_size=32).state_dict(), path
    )
    args = {"embed_dim": 96, "depth": 2, "num_classes": 5, "img_size": 32, "patch_size": 16}
    path.with_suffix(".json").write_text(json.dumps({"model_args": args}))
    out = tmp_path / "b"
    result = run_cli("build", "--weights", str(path), "--num-heads", "4", "--patch-sizes", "16", "--out", str(out))
    assert result.exit_code == 3, result.output + result.stderr
    line = one_line_error(result)
    assert "source parity ✗" in line and "timm VisionTransformer" in line
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["variants"][0]["status"] == "passed" and manifest["source_parity"]["status"] == "failed"
    assert "FAILED" in (out / "report.md").read_text()


def test_a_manifest_from_before_the_check_still_opens(demo, tmp_path):
    import shutil

    from exporter.bundle.door import Bundle

    old = tmp_path / "old"
    shutil.copytree(demo, old)
    edit_manifest(old, lambda data: data.pop("source_parity") and None)
    assert Bundle.open(old).manifest.model_dump(mode="json")["source_parity"] == {}  # absent: the empty entry
    result = run_cli("inspect", str(old))
    assert result.exit_code == 0 and "source parity" not in result.output
    assert run_cli("validate", str(old)).exit_code == 0


def test_a_malformed_source_parity_is_refused(demo, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(demo, bad)
    edit_manifest(bad, lambda data: data["source_parity"].update(status="fine"))
    result = run_cli("inspect", str(bad))
    assert result.exit_code == 2 and "source_parity" in one_line_error(result)


def test_a_timm_clip_layout_without_config_loads(tmp_path):
    """timm's pre_norm ViTs (CLIP) have no patch bias by construction; reading one off its weights
    used to add patch_bias=False, an argument timm's VisionTransformer does not take."""
    from exporter.source.load import load_source
    from exporter.source.model import SourceSpec

    path = tmp_path / "clip.pt"
    torch.save(tiny_model("vit_base_patch16_clip_224", num_classes=0).state_dict(), path)
    source = load_source(SourceSpec(weights=path, num_heads=2))
    assert source.model_args["pre_norm"] and "patch_bias" not in source.model_args
