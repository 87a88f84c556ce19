"""Hugging Face transformers folders (ViT, DeiT, DINOv2): mapped into timm, built through the CLI,
and proven against transformers' own model (source parity)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import refused, run_cli

transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)


def save_hf(model, folder: Path) -> Path:
    """``model`` with every weight randomised (tokens, norms and layer scales too: transformers
    initialises some to zeros or ones, which would hide a wrong mapping), saved with save_pretrained."""
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    model.eval().save_pretrained(str(folder))
    return folder


def hf_folder(tmp_path_factory, name: str, model_cls: str, config_cls: str, **config) -> Path:
    cfg = getattr(transformers, config_cls)(**{**TINY, **config})
    return save_hf(getattr(transformers, model_cls)(cfg), tmp_path_factory.mktemp("hf") / name)


@pytest.fixture(scope="module")
def vit_classifier(tmp_path_factory) -> Path:
    folder = hf_folder(
        tmp_path_factory,
        "tiny-vit",
        "ViTForImageClassification",
        "ViTConfig",
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=3,
        id2label={0: "cat", 1: "dog", 2: "owl"},
        label2id={"cat": 0, "dog": 1, "owl": 2},
    )
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, resample=3).save_pretrained(str(folder))
    return folder


def build(folder: Path | str, out: Path, *patches: str, extra: tuple[str, ...] = ()) -> dict:
    result = run_cli("build", "--weights", str(folder), "--patch-sizes", *patches, "--out", str(out), *extra)
    assert result.exit_code == 0, result.output + result.stderr
    assert "Traceback" not in result.output + result.stderr
    return json.loads((out / "manifest.json").read_text())


def transformers_output(folder: Path, x: np.ndarray) -> np.ndarray:
    """transformers' own model from the folder: logits, or the CLS token of last_hidden_state."""
    arch = json.loads((folder / "config.json").read_text())["architectures"][0]
    model = getattr(transformers, arch).from_pretrained(str(folder)).eval()
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(x))
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state[:, 0]).numpy()


def onnx_output(bundle: Path, label: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle / "onnx" / f"model_{label}.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixel_values": x})[0]


def assert_source_parity(manifest: dict, label: str) -> None:
    sp = manifest["source_parity"]
    assert sp["status"] == "passed", sp
    assert sp["variant"] == label and sp["candidate"].startswith(f"onnx/model_{label}.onnx")
    assert "transformers" in sp["reference"] and "from_pretrained" in sp["reference"]
    assert sp["parity"]["passed"] and sp["parity"]["max_abs"] < 1e-4


def test_vit_folder_builds_and_its_onnx_equals_transformers_logits(vit_classifier, tmp_path):
    manifest = build(vit_classifier, tmp_path / "b", "8", "16")
    assert_source_parity(manifest, "p8")
    arch = manifest["source"]["architecture"]
    assert (arch["img_size"], arch["kernel_size"], arch["num_heads"], arch["num_classes"]) == ([32, 32], [8, 8], 2, 3)
    assert arch["model_args"]["norm_eps"] == 1e-12 and arch["model_args"]["act_layer"] == "gelu"
    assert manifest["labels"] == ["cat", "dog", "owl"]  # id2label
    pre = manifest["preprocessing"]  # from preprocessor_config.json
    assert (pre["interpolation"], pre["crop_pct"], pre["crop_mode"]) == ("bicubic", 1.0, "squash")
    assert pre["source"].startswith("transformers image processor")
    assert manifest["variants"][1]["pos_resize"] == "bicubic"  # transformers' grid resample: no antialias
    # The done-when, checked here directly: the ONNX against transformers' logits, fp32 tolerance.
    from exporter.parity.compare import compare_outputs

    x = np.random.default_rng(1).standard_normal((5, 3, 32, 32)).astype(np.float32)
    assert compare_outputs(transformers_output(vit_classifier, x), onnx_output(tmp_path / "b", "p8", x))
    inspect = run_cli("inspect", str(tmp_path / "b"))
    assert "source parity ✓" in inspect.output and "ViTForImageClassification" in inspect.output
    assert "Source parity ✓" in (tmp_path / "b" / "report.md").read_text()


def test_a_file_in_the_folder_and_validate_rebuild(vit_classifier, tmp_path):
    """``--weights FOLDER/model.safetensors`` reads config.json beside it; ``validate --rebuild``
    rebuilds with the same eps (1e-12) and mapping."""
    build(vit_classifier / "model.safetensors", tmp_path / "b", "8")
    result = run_cli("validate", str(tmp_path / "b"), "--rebuild")
    assert result.exit_code == 0, result.output + result.stderr


def test_eps_and_activation_reach_the_timm_model(tmp_path_factory):
    from exporter.build.variant import make_variant
    from exporter.source.load import load_source
    from exporter.source.model import SourceSpec

    folder = hf_folder(
        tmp_path_factory,
        "gelu-new",
        "ViTModel",
        "ViTConfig",
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        hidden_act="gelu_new",
        layer_norm_eps=1e-5,
    )
    from exporter.build.plan import plan_variants

    source = load_source(SourceSpec(weights=folder))
    model = make_variant(source, plan_variants(source, _options(8))[0]).model
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}
    assert type(model.blocks[0].mlp.act).__name__ == "GELUTanh"
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ours = model(torch.from_numpy(x)).numpy()
    assert np.abs(ours - transformers_output(folder, x)).max() < 1e-5
    assert source.num_classes == 0
    assert any(n.startswith("pooler.dense.weight dropped") for n in source.origin.notes)  # ViTModel's pooler


def _options(*patches: int):
    from exporter.build.options import BuildOptions

    return BuildOptions(patch_sizes=tuple((p, p) for p in patches))


def test_vit_feature_model(tmp_path_factory, tmp_path):
    folder = hf_folder(
        tmp_path_factory, "vit-features", "ViTModel", "ViTConfig", intermediate_size=64, image_size=32, patch_size=8
    )
    manifest = build(folder, tmp_path / "b", "8")
    assert_source_parity(manifest, "p8")
    assert manifest["source_parity"]["output"].startswith("embeddings")
    assert manifest["source"]["architecture"]["num_classes"] == 0
    assert "pooler" in " ".join(manifest["source"]["architecture"]["notes"])


@pytest.mark.parametrize(
    "model_cls", ["DeiTForImageClassificationWithTeacher", "DeiTForImageClassification", "DeiTModel"]
)
def test_deit(tmp_path_factory, tmp_path, model_cls):
    """The distilled DeiT (distillation token, two heads averaged) maps to timm's
    VisionTransformerDistilled; the single-head one and the headless DeiTModel (its pooler dropped)
    keep the distillation token as a prefix token."""
    folder = hf_folder(
        tmp_path_factory,
        "deit",
        model_cls,
        "DeiTConfig",
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=4,
    )
    manifest = build(folder, tmp_path / "b", "8", "16")
    assert_source_parity(manifest, "p8")
    arch = manifest["source"]["architecture"]
    distilled = model_cls.endswith("Teacher")
    assert arch["model_name"] == ("deit_tiny_distilled_patch16_224" if distilled else None)
    assert arch["num_pos_prefix_tokens"] == 2 and manifest["variants"][0]["tokens"] == 16 + 2
    assert arch["num_classes"] == (0 if model_cls == "DeiTModel" else 4)
    x = np.random.default_rng(2).standard_normal((4, 3, 32, 32)).astype(np.float32)
    from dataclasses import replace

    from exporter.parity.compare import compare_outputs
    from exporter.parity.tolerance import TOLERANCES

    tol = replace(TOLERANCES["fp32"], min_top1=0.0) if model_cls == "DeiTModel" else TOLERANCES["fp32"]
    assert compare_outputs(transformers_output(folder, x), onnx_output(tmp_path / "b", "p8", x), tol)


@pytest.mark.parametrize("registers", [0, 2])
def test_dinov2(tmp_path_factory, tmp_path, registers):
    """DINOv2 (layer scale, eps 1e-6) and DINOv2 with registers (no position for the registers:
    the class slot folds into the class token), at 56 with patch 14."""
    if registers:
        folder = hf_folder(
            tmp_path_factory,
            "dinov2-reg",
            "Dinov2WithRegistersModel",
            "Dinov2WithRegistersConfig",
            image_size=56,
            patch_size=14,
            num_register_tokens=registers,
        )
    else:
        folder = hf_folder(tmp_path_factory, "dinov2", "Dinov2Model", "Dinov2Config", image_size=56, patch_size=14)
    manifest = build(folder, tmp_path / "b", "14", "28")
    assert_source_parity(manifest, "p14")
    args = manifest["source"]["architecture"]["model_args"]
    assert args["norm_eps"] == 1e-6 and args["init_values"] == 1.0 and args.get("reg_tokens", 0) == registers
    assert manifest["variants"][0]["tokens"] == 16 + 1 + registers
    assert manifest["variants"][1]["pos_resize"] == "bicubic"
    from dataclasses import replace

    from exporter.parity.compare import compare_outputs
    from exporter.parity.tolerance import TOLERANCES

    x = np.random.default_rng(3).standard_normal((4, 3, 56, 56)).astype(np.float32)
    features = replace(TOLERANCES["fp32"], min_top1=0.0)
    assert compare_outputs(transformers_output(folder, x), onnx_output(tmp_path / "b", "p14", x), features)


def test_key_map_reads_transformers_4_and_5_names(tmp_path_factory):
    """The saved file holds transformers 4's names (attention.attention.query); a state dict taken
    from a transformers 5 model in memory holds the new ones (q_proj): both map to the same timm keys."""
    from exporter.source import hf_layout, hf_weights
    from exporter.source.readers import read_safetensors

    folder = hf_folder(
        tmp_path_factory,
        "names",
        "ViTForImageClassification",
        "ViTConfig",
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=3,
    )
    saved, _ = read_safetensors(folder / "model.safetensors")
    model = transformers.ViTForImageClassification.from_pretrained(str(folder))
    memory = model.state_dict()
    assert any("q_proj" in k for k in memory) and any("attention.attention.query" in k for k in saved)
    lay = hf_layout.layout({"model_type": "vit", "architectures": ["ViTForImageClassification"]})
    a, _ = hf_weights.map_weights(saved, lay)
    b, _ = hf_weights.map_weights(memory, lay)
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    qkv = a["blocks.0.attn.qkv.weight"]
    assert torch.equal(qkv[:32], saved["vit.encoder.layer.0.attention.attention.query.weight"])
    assert torch.equal(qkv[64:], saved["vit.encoder.layer.0.attention.attention.value.weight"])


def test_unknown_weight_is_named(tmp_path):
    from exporter.core.errors import CheckpointError
    from exporter.source import hf_layout, hf_weights

    lay = hf_layout.layout({"model_type": "vit", "architectures": ["ViTModel"]})
    with pytest.raises(CheckpointError, match="'encoder.layer.0.adapter.weight'"):
        hf_weights.map_weights({"encoder.layer.0.adapter.weight": torch.zeros(2)}, lay)


@pytest.mark.parametrize(
    ("model_cls", "config_cls", "words"),
    [
        ("SwinModel", "SwinConfig", ("a transformers SwinModel checkpoint (model_type 'swin')",)),
        ("BeitModel", "BeitConfig", ("a transformers BeitModel checkpoint (model_type 'beit')",)),
        ("Dinov2ForImageClassification", "Dinov2Config", ("Dinov2ForImageClassification", "'dinov2'")),
    ],
)
def test_unsupported_layout_is_named(tmp_path, model_cls, config_cls, words):
    config = getattr(transformers, config_cls)(image_size=32, patch_size=4, num_hidden_layers=1, num_labels=2)
    folder = tmp_path / "m"
    getattr(transformers, model_cls)(config).save_pretrained(str(folder))
    result = run_cli("build", "--weights", str(folder), "--patch-sizes", "8", "--out", str(tmp_path / "b"))
    line = refused(result, *words, "supported: vit, deit, dinov2, dinov2_with_registers")
    assert not (tmp_path / "b").exists(), line


def test_config_and_weights_disagreeing_is_exit_2(vit_classifier, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(vit_classifier, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "image_size": 48}))
    result = run_cli("build", "--weights", str(folder), "--patch-sizes", "8", "--out", str(tmp_path / "b"))
    refused(result, "image_size [48, 48]", "position embedding has 17")


def test_empty_folder_is_named(tmp_path):
    result = run_cli("build", "--weights", str(tmp_path), "--patch-sizes", "8", "--out", str(tmp_path / "b"))
    refused(result, "is a folder without model.safetensors or pytorch_model.bin")


def test_quiet_build_prints_one_line(vit_classifier, tmp_path):
    """transformers' own 'Loading weights' progress bar (source parity) stays off the terminal."""
    result = run_cli(
        "build", "--weights", str(vit_classifier), "--patch-sizes", "8", "--out", str(tmp_path / "b"), "-q"
    )
    assert result.exit_code == 0, result.output + result.stderr
    assert result.stderr == "" and len(result.stdout.strip().splitlines()) == 1, result.stdout + result.stderr


def test_a_distilled_deit_refuses_dynamic_resolution(tmp_path_factory, tmp_path):
    folder = hf_folder(
        tmp_path_factory,
        "deit-dyn",
        "DeiTForImageClassificationWithTeacher",
        "DeiTConfig",
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=2,
    )
    args = ("--patch-sizes", "8", "--img-size", "dynamic:16-64", "--out", str(tmp_path / "b"))
    refused(run_cli("build", "--weights", str(folder), *args), "--img-size dynamic:16-64", "distilled DeiT")
    assert not (tmp_path / "b").exists()


def test_dinov2_image_processor_becomes_a_centre_crop(tmp_path):
    """BitImageProcessor (DINOv2's): short side 256, centre crop 224, bicubic, ImageNet mean/std."""
    from exporter.source import hf_layout, hf_processor

    transformers.BitImageProcessor(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        do_center_crop=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(str(tmp_path))
    config = {"model_type": "dinov2", "architectures": ["Dinov2Model"], "_path": str(tmp_path / "config.json")}
    pre = hf_processor.preprocessing(config, hf_layout.layout(config))
    assert (pre["interpolation"], pre["crop_pct"], pre["crop_mode"]) == ("bicubic", 0.875, "center")
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["source"].startswith("transformers image processor")
    (tmp_path / "preprocessor_config.json").unlink()
    assumed = hf_processor.preprocessing(config, hf_layout.layout(config))
    assert assumed["source"].startswith("assumed") and assumed["crop_pct"] == 0.875


def test_clip_vision_tower(tmp_path_factory, tmp_path):
    """CLIPVisionModel: class embedding and nn.Embedding positions reshaped, pre_layrnorm as timm's
    pre_norm (no patch bias), quick_gelu, eps 1e-5; its output is pooler_output (post_layernorm)."""
    folder = hf_folder(
        tmp_path_factory,
        "clip-vision",
        "CLIPVisionModel",
        "CLIPVisionConfig",
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    manifest = build(folder, tmp_path / "b", "8", "16")
    assert_source_parity(manifest, "p8")
    assert manifest["source_parity"]["reference"].endswith("pooler_output (the CLS token after post_layernorm)")
    args = manifest["source"]["architecture"]["model_args"]
    assert args["pre_norm"] and args["act_layer"] == "quick_gelu" and args["norm_eps"] == 1e-5
    assert manifest["source"]["architecture"]["num_classes"] == 0


def test_without_transformers_source_parity_is_skipped_not_failed(vit_classifier, tmp_path, monkeypatch):
    """The mapping needs no transformers; only the check does, and says so when it is missing."""
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    manifest = build(vit_classifier, tmp_path / "b", "8")
    sp = manifest["source_parity"]
    assert sp["status"] == "skipped" and "transformers is not installed" in sp["reason"]
    assert manifest["variants"][0]["status"] == "passed"


def test_model_flag_with_a_transformers_folder_is_refused(vit_classifier, tmp_path):
    args = ("--model", "vit_tiny_patch16_224", "--patch-sizes", "8", "--out", str(tmp_path / "b"))
    refused(run_cli("build", "--weights", str(vit_classifier), *args), "ViTForImageClassification", "drop --model")


def test_image_processor_defaults_are_an_assumption(vit_classifier, tmp_path):
    """Without preprocessor_config.json the model type's processor defaults are used and said:
    a warning, the manifest's assumptions, and exit 2 under --strict."""
    import shutil

    folder = tmp_path / "no-processor"
    shutil.copytree(vit_classifier, folder)
    (folder / "preprocessor_config.json").unlink()
    args = ("--patch-sizes", "8", "--strict")
    refused(run_cli("build", "--weights", str(folder), *args, "--out", str(tmp_path / "a")), "preprocessor_config.json")
    result = run_cli("build", "--weights", str(vit_classifier), *args, "--out", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output + result.stderr
    manifest = build(folder, tmp_path / "c", "8")
    assert manifest["preprocessing"]["source"] == "assumed (transformers vit image processor defaults)"
    assert "preprocessor_config.json" in json.dumps(manifest["source"]["architecture"]["assumed"])


@pytest.mark.parametrize("height", [10**400, "224", -224, None])
def test_a_processor_edge_that_is_no_number_is_one_error_naming_it(tmp_path, height):
    """crop_size.height / size.shortest_edge are data: a 400-digit integer, a string or a negative
    length is a CheckpointError naming the key (it was an OverflowError or a TypeError: exit 1)."""
    from exporter.core.errors import CheckpointError
    from exporter.source import hf_layout, hf_processor

    processor = {"size": {"shortest_edge": 256}, "crop_size": {"height": height}, "do_center_crop": True}
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(processor)
        if height != 10**400
        else '{"size": {"shortest_edge": 256}, "crop_size": {"height": 1' + "0" * 400 + '}, "do_center_crop": true}'
    )
    config = {"model_type": "dinov2", "architectures": ["Dinov2Model"], "_path": str(tmp_path / "config.json")}
    if height is None:  # no crop height: the resize alone, nothing to refuse
        assert hf_processor.preprocessing(config, hf_layout.layout(config))["crop_pct"] == 1.0
        return
    with pytest.raises(CheckpointError, match="crop_size.height must be a positive number"):
        hf_processor.preprocessing(config, hf_layout.layout(config))
