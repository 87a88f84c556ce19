"""The same build on real timm architectures (tiny widths), and one full-size FlexiViT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY, one_line_error, run_cli, save_with_config, tiny_model


def build_ok(*args: str) -> dict:
    result = run_cli("build", *args, "--quiet", "--parity-samples", "4")
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads((Path(args[args.index("--out") + 1]) / "manifest.json").read_text())


def test_flexivit_at_240_needs_a_divisible_image_size(tiny_flexivit, tmp_path):
    result = run_cli(
        "build", "--weights", str(tiny_flexivit), "--patch-sizes", "8", "16", "32", "--out", str(tmp_path / "x")
    )
    assert result.exit_code == 2
    error = one_line_error(result)
    assert "patch size 32 does not divide image size 240" in error and "224 or 256" in error
    assert not (tmp_path / "x").exists()


def test_flexivit_img_size_auto(tiny_flexivit, tmp_path):
    manifest = build_ok(
        "--weights", str(tiny_flexivit), "-p", "8", "16", "32", "--img-size", "auto", "--out", str(tmp_path / "auto")
    )
    assert [v["img_size"] for v in manifest["variants"]] == [[240, 240], [240, 240], [256, 256]]
    assert manifest["options"]["img_size_policy"] == "auto"
    assert all(v["status"] == "passed" for v in manifest["variants"])


def test_flexivit_fixed_224_and_non_square_patch(tiny_flexivit, tmp_path):
    manifest = build_ok(
        "--weights",
        str(tiny_flexivit),
        "-p",
        "8",
        "16",
        "32",
        "14x16",
        "--img-size",
        "224",
        "--out",
        str(tmp_path / "fixed"),
    )
    assert [v["grid"] for v in manifest["variants"]] == [[28, 28], [14, 14], [7, 7], [16, 14]]
    assert manifest["variants"][3]["onnx"]["path"] == "onnx/model_p14x16.onnx"


@pytest.mark.parametrize("name", ["vit_base_patch16_224", "deit_tiny_patch16_224", "flexivit_base"])
def test_class_token_vits_named_with_local_weights(tmp_path, name):
    """A named timm ViT or FlexiViT: --model NAME plus local weights (a config beside them carries the tiny width)."""
    weights = save_with_config(tiny_model(name), tmp_path / "w.pth", name, **TINY)
    manifest = build_ok(
        "--model",
        name,
        "--weights",
        str(weights),
        "-p",
        "8",
        "16",
        "32",
        "--img-size",
        "auto",
        "--out",
        str(tmp_path / "b"),
    )
    arch = manifest["source"]["architecture"]
    flexi = name.startswith("flexivit")
    assert (arch["model_name"], arch["family"]) == (name, "flexivit" if flexi else "vit")
    assert arch["num_pos_prefix_tokens"] == (0 if flexi else 1)  # FlexiViT: no position slot for the class token
    tokens = [901, 226, 65] if flexi else [785, 197, 50]  # 240 (auto: 256 for p32) vs 224
    assert [v["tokens"] for v in manifest["variants"]] == tokens
    resize = "bilinear" if flexi else "bicubic+antialias"
    assert all(v["patch_resize"] == resize for v in manifest["variants"])


def test_vit_with_registers_inferred_from_weights(tmp_path):
    torch.save(tiny_model("vit_base_patch16_224", reg_tokens=2).state_dict(), tmp_path / "w.pth")
    manifest = build_ok(
        "--weights", str(tmp_path / "w.pth"), "--num-heads", "2", "-p", "8", "32", "--out", str(tmp_path / "b")
    )
    assert manifest["source"]["architecture"]["num_pos_prefix_tokens"] == 3
    assert [v["tokens"] for v in manifest["variants"]] == [787, 52]


@pytest.mark.slow
def test_full_size_flexivit_small_build(tmp_path):
    """flexivit_small (22 M parameters) at --img-size auto: every variant passes fp32 parity."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("flexivit_small", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "flexivit_small.safetensors"))
    manifest = build_ok(
        "--model",
        "flexivit_small",
        "--weights",
        str(tmp_path / "flexivit_small.safetensors"),
        "-p",
        "8",
        "16",
        "32",
        "--img-size",
        "auto",
        "--out",
        str(tmp_path / "b"),
    )
    assert [v["tokens"] for v in manifest["variants"]] == [901, 226, 65]
    assert all(v["status"] == "passed" for v in manifest["variants"])


@pytest.mark.parametrize(
    "flags, flexivit, expected",
    [
        (("--antialias",), False, "bicubic+antialias"),  # was bilinear+antialias: the FlexiViT default leaked in
        (("--no-antialias",), False, "bicubic"),
        (("--interpolation", "bilinear"), False, "bilinear+antialias"),
        (("--antialias",), True, "bilinear+antialias"),
        (("--interpolation", "bicubic"), True, "bicubic"),
    ],
)
def test_a_partial_resize_override_keeps_the_checkpoint_familys_default(tiny_vit, flags, flexivit, expected, tmp_path):
    source = ("-p", "8", "16") if flexivit else ("--weights", str(tiny_vit), "-p", "8")
    manifest = build_ok(*source, *flags, "--out", str(tmp_path / "b"))
    assert {v["patch_resize"] for v in manifest["variants"]} == {expected}
