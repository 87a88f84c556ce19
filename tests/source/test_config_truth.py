"""Issue 21: the checkpoint's config is the truth, and every value it does not state is said.

Tiny real timm ViTs saved the way users save them (timm's own ``save_for_hf`` folders, bare state
dicts), built through the CLI, their ONNX run in onnxruntime against timm's own model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import refused, run_cli

ARCH = "vit_tiny_patch16_224"
TINY_ARGS = dict(img_size=96, embed_dim=32, depth=1, num_heads=2, num_classes=5)


def save_for_hf(folder: Path, arch: str = ARCH, safe: bool = True, **args) -> Path:
    """A tiny timm model saved by timm's own ``save_for_hf`` (config.json + model.safetensors or
    pytorch_model.bin)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, **{**TINY_ARGS, **args}).eval()
    with torch.no_grad():  # trained grids are of order 1, timm's initial one 0.02: its resample would not show
        model.pos_embed.mul_(30)
    timm.models.save_for_hf(model, str(folder), safe_serialization=safe)
    return folder


def timm_model(folder: Path, **overrides) -> torch.nn.Module:
    """The folder's model as timm builds it from its own config (random weights)."""
    import timm

    config = json.loads((folder / "config.json").read_text())
    return timm.create_model(config["architecture"], pretrained=False, **{**config["model_args"], **overrides})


def timm_from_folder(folder: Path) -> torch.nn.Module:
    """The folder's model as timm builds it from its own config, weights loaded strictly."""
    model = timm_model(folder)
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
    else:
        state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def onnx_logits(onnx: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixel_values": x})[0]


def pixels(size: int, n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)


def manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_for_hf(tmp_path_factory.mktemp("hf") / "my-vit")


def test_save_for_hf_folder_builds_at_its_own_size(hf_folder, tmp_path):
    """It built at the architecture's 224 (the 6x6 grid resampled to 14x14, every check passing)."""
    out = tmp_path / "b"
    result = run_cli("build", "--weights", str(hf_folder), "-p", "16", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output + result.stderr
    data = manifest(out)
    assert data["source"]["architecture"]["img_size"] == [96, 96]
    (variant,) = data["variants"]
    assert (variant["img_size"], variant["grid"]) == ([96, 96], [6, 6])
    assert data["source"]["path"].endswith("model.safetensors")
    x = pixels(96)
    with torch.no_grad():
        expected = timm_from_folder(hf_folder)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_logits(out / variant["onnx"]["path"], x), expected, atol=1e-4, rtol=1e-3)
    # Everything came from the config: nothing assumed, nothing to warn about.
    assert data["source"]["architecture"]["assumptions"] == [] and "assum" not in result.stdout + result.stderr


def test_folder_and_generic_file_names(hf_folder, tmp_path):
    """A folder's bundle takes the config's architecture, else the folder's name, never 'model'."""
    from exporter.source.load import source_name
    from exporter.source.model import SourceSpec

    assert source_name(SourceSpec(weights=hf_folder)) == ARCH
    assert source_name(SourceSpec(weights=hf_folder / "model.safetensors")) == ARCH
    bare = tmp_path / "cats-vit"
    bare.mkdir()
    (bare / "model.safetensors").write_bytes((hf_folder / "model.safetensors").read_bytes())
    assert source_name(SourceSpec(weights=bare)) == "cats-vit"


def test_a_generic_weights_name_takes_the_architecture_from_the_config(hf_folder, tmp_path, monkeypatch):
    """``checkpoint.safetensors`` named the bundle 'checkpoint' (and the Triton models checkpoint_p16);
    a transformers config.json beside ``pytorch_model.bin`` gave the folder's name."""
    import shutil

    from exporter.source.load import source_name
    from exporter.source.model import SourceSpec

    run = tmp_path / "run-3"
    run.mkdir()
    shutil.copy(hf_folder / "model.safetensors", run / "checkpoint.safetensors")
    shutil.copy(hf_folder / "config.json", run / "config.json")
    monkeypatch.chdir(tmp_path)
    result = run_cli("build", "--weights", str(run / "checkpoint.safetensors"), "-p", "16", "-q")
    assert result.exit_code == 0, result.output + result.stderr
    assert manifest(tmp_path / "bundles" / ARCH)["name"] == ARCH
    result = run_cli("triton", f"bundles/{ARCH}", "--out", "repo", "--backend", "python")
    assert result.exit_code == 0 and f"{ARCH}_p16" in result.stdout, result.output + result.stderr

    hf = tmp_path / "cats"
    hf.mkdir()
    (hf / "pytorch_model.bin").write_bytes(b"")  # the name is decided before any weights are read
    (hf / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTForImageClassification"]}))
    assert source_name(SourceSpec(weights=hf / "pytorch_model.bin")) == "ViTForImageClassification"
    (hf / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    assert source_name(SourceSpec(weights=hf)) == "dinov2"
    (hf / "config.json").unlink()
    assert source_name(SourceSpec(weights=hf / "pytorch_model.bin")) == "cats"


def test_dinov2_with_registers_saved_at_126_is_native_126(tmp_path):
    """It was read as DINOv2's native 518; its position grid resamples as DINOv2's own code does."""
    from exporter.source.load import load_source
    from exporter.source.model import SourceSpec
    from exporter.source.resampling import ResizeMethod

    folder = save_for_hf(tmp_path / "dino", "vit_small_patch14_reg4_dinov2", safe=False, img_size=126, num_classes=0)
    source = load_source(SourceSpec(weights=folder))
    assert (source.img_size, source.pos_grid, source.patch_size) == ((126, 126), (9, 9), (14, 14))
    assert source.pos_resize_method() == ResizeMethod("bicubic", antialias=False)
    assert source.origin.file_format == "torch" and source.state_dict["reg_token"].shape[1] == 4


def edit_config(folder: Path, tmp_path: Path, change) -> Path:
    """A copy of ``folder`` with its config.json changed."""
    copy = tmp_path / folder.name
    copy.mkdir(parents=True)
    (copy / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def test_config_and_weights_that_disagree_are_refused(hf_folder, tmp_path):
    def both(config):
        config["model_args"]["img_size"] = [112, 112]
        config["pretrained_cfg"]["input_size"] = [3, 112, 112]

    folder = edit_config(hf_folder, tmp_path / "a", both)
    refused(
        run_cli("build", "--weights", str(folder), "-p", "16"),
        "model_args.img_size 112",
        "position grid 6x6 times kernel 16x16 is 96",
    )
    folder = edit_config(hf_folder, tmp_path / "b", lambda c: c["model_args"].update(img_size=[112, 112]))
    refused(run_cli("build", "--weights", str(folder), "-p", "16"), "model_args.img_size 112", "input_size 96")
    folder = edit_config(hf_folder, tmp_path / "c", lambda c: c["model_args"].update(num_heads=5))
    refused(run_cli("build", "--weights", str(folder), "-p", "16"), "model_args.num_heads 5", "width 32")
    folder = edit_config(hf_folder, tmp_path / "d", lambda c: c.update(num_classes=7))
    refused(run_cli("build", "--weights", str(folder), "-p", "16"), "'num_classes' 7", "model_args.num_classes 5")


def test_num_heads_against_a_config_that_states_them_is_refused(hf_folder):
    # the config says 2 heads: --num-heads 4 would build another model (only source parity saw it)
    line = refused(run_cli("build", "--weights", str(hf_folder), "-p", "16", "--num-heads", "4"), "--num-heads 4")
    assert "states 2 heads" in line and "config.json" in line
    assert "Traceback" not in line


def test_transformers_folder_and_bare_folder_are_named(hf_folder, tmp_path):
    folder = tmp_path / "swin"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((hf_folder / "model.safetensors").read_bytes())
    (folder / "config.json").write_text(json.dumps({"model_type": "swin", "image_size": 224}))
    refused(run_cli("build", "--weights", str(folder), "-p", "16"), "model_type", "swin")
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(run_cli("build", "--weights", str(empty), "-p", "16"), "model.safetensors or pytorch_model.bin")


def test_a_failed_build_leaves_no_bundles_folder(tmp_path, monkeypatch):
    (tmp_path / "w.pt").write_bytes(b"not a checkpoint")
    monkeypatch.chdir(tmp_path)
    refused(run_cli("build", "--weights", "w.pt", "-p", "16"), "w.pt")
    assert not (tmp_path / "bundles").exists()


def test_no_patch_embedding_advises_real_flags(tmp_path):
    import timm

    sd = {k: v for k, v in timm.create_model(ARCH, **TINY_ARGS).state_dict().items() if "patch_embed" not in k}
    torch.save(sd, tmp_path / "w.pt")
    line = refused(run_cli("build", "--weights", str(tmp_path / "w.pt"), "-p", "16"), "patch_embed.proj.weight")
    assert "-n/--name" not in line and "--weights" in line and "flexiexport resize -n KEY" in line


# The model: 192 wide with 6 heads, saved without a config (width/64 guesses 3).
SIX_HEADS = dict(img_size=32, patch_size=16, embed_dim=192, depth=1, num_heads=6, num_classes=4)


@pytest.fixture(scope="module")
def six_heads(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(**SIX_HEADS).eval()
    path = tmp_path_factory.mktemp("six") / "six_heads.pt"
    torch.save(model.state_dict(), path)
    return path, model


def test_six_heads_without_config_warns_and_names_num_heads(six_heads, tmp_path, caplog):
    path, real = six_heads
    out = tmp_path / "guessed"
    with caplog.at_level("WARNING", logger="exporter.build.pipeline"):
        result = run_cli("build", "--weights", str(path), "-p", "16", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output + result.stderr
    assert "assumed heads 3 (pass --num-heads or a config.json)" in caplog.text
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("✓ six_heads: 1 of 1 variants passed")
    assert "3 assumptions: heads 3 (pass --num-heads or a config.json); " in summary
    data = manifest(out)
    said = data["source"]["architecture"]["assumptions"]
    assert [a["what"] for a in said] == ["heads", "layers", "preprocessing"]
    assert all(a["settle"] for a in said)
    assert "Assumed (not stated by the checkpoint or its config): heads 3" in (out / "report.md").read_text()
    shown = run_cli("inspect", str(out))
    assert shown.exit_code == 0 and "assumed heads 3 (pass --num-heads or a config.json)" in shown.stdout
    # The guess is wrong, and its ONNX shows it (parity passed: the reference shared the guess).
    x = pixels(32)
    with torch.no_grad():
        expected = real(torch.from_numpy(x)).numpy()
    assert np.abs(onnx_logits(out / data["variants"][0]["onnx"]["path"], x) - expected).max() > 1e-3


def test_quiet_summary_says_source_parity_was_not_independently_checked(six_heads, tmp_path):
    path, _ = six_heads
    result = run_cli("build", "--weights", str(path), "-p", "16", "-q", "--out", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output + result.stderr
    assert "source parity: inferred, not independently checked" in result.stdout


def test_six_heads_strict_refuses_and_num_heads_settles_it(six_heads, tmp_path, caplog):
    path, real = six_heads
    line = refused(run_cli("build", "--weights", str(path), "-p", "16", "--strict"), "--strict", "heads 3")
    assert "--num-heads" in line and "preprocessing" in line
    assert not list(tmp_path.iterdir())
    out = tmp_path / "six"
    with caplog.at_level("WARNING", logger="exporter.build.pipeline"):
        result = run_cli("build", "--weights", str(path), "-p", "16", "--num-heads", "6", "--out", str(out))
    assert result.exit_code == 0, result.output + result.stderr
    final = " ".join(result.stdout.split())  # the table's last line, as Rich may wrap it
    assert final.endswith(
        "2 assumptions: layers LayerNorm eps 1e-6, GELU (timm ViT's; pass --model NAME or a "
        "config.json); preprocessing mean [0.5, 0.5, 0.5], std [0.5, 0.5, 0.5], interpolation "
        "bicubic, crop_pct 0.9 (timm ViT default; a config.json "
        "pretrained_cfg.mean/std/interpolation/crop_pct settles it)"
    )
    data = manifest(out)
    assert "heads" not in [a["what"] for a in data["source"]["architecture"]["assumptions"]]
    assert "assumed heads" not in caplog.text and "assumed layers" in caplog.text
    assert data["source"]["architecture"]["num_heads"] == 6
    x = pixels(32)
    with torch.no_grad():
        expected = real(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_logits(out / data["variants"][0]["onnx"]["path"], x), expected, atol=1e-4)


def test_manifest_with_only_old_assumed_strings_still_opens(six_heads, tmp_path):
    """Manifests written before the structured list kept ``assumed`` strings only."""
    from tests.conftest import edit_manifest

    path, _ = six_heads
    out = tmp_path / "old"
    assert run_cli("build", "--weights", str(path), "-p", "16", "--out", str(out), "-q").exit_code == 0

    def old_style(data):
        arch = data["source"]["architecture"]
        del arch["assumptions"]
        arch["assumed"] = ["num_heads=3 (head dim 64, or near it; the weights do not store it)"]

    edit_manifest(out, old_style)
    shown = run_cli("inspect", str(out))
    assert shown.exit_code == 0, shown.output + shown.stderr
    assert "assumed num_heads=3 (head dim 64" in shown.stdout
    assert run_cli("validate", str(out)).exit_code == 0


def pos_reference(folder: Path, img: int, interpolation: str, antialias: bool) -> torch.nn.Module:
    """The folder's model at ``img`` with its position grid resampled by timm's own function."""
    from timm.layers import resample_abs_pos_embed

    model = timm_from_folder(folder)
    grid = model.patch_embed.grid_size
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    patch = model.patch_embed.patch_size
    state = model.state_dict()
    state["pos_embed"] = resample_abs_pos_embed(
        state["pos_embed"],
        [img // patch[0], img // patch[1]],
        old_size=list(grid),
        num_prefix_tokens=prefix,
        interpolation=interpolation,
        antialias=antialias,
    )
    resized = timm_model(folder, img_size=img)
    resized.load_state_dict(state, strict=True)
    return resized.eval()


def test_pos_interpolation_flags_are_used_recorded_and_revalidated(hf_folder, tmp_path):
    out = tmp_path / "bilinear"
    args = ("--img-size", "128", "--pos-interpolation", "bilinear", "--pos-antialias")
    result = run_cli("build", "--weights", str(hf_folder), "-p", "16", *args, "--out", str(out), "-q")
    assert result.exit_code == 0, result.output + result.stderr
    (variant,) = manifest(out)["variants"]
    assert variant["pos_resize"] == "bilinear+antialias" and variant["grid"] == [8, 8]
    x = pixels(128)
    with torch.no_grad():
        bilinear = pos_reference(hf_folder, 128, "bilinear", True)(torch.from_numpy(x)).numpy()
        bicubic = pos_reference(hf_folder, 128, "bicubic", True)(torch.from_numpy(x)).numpy()
    got = onnx_logits(out / variant["onnx"]["path"], x)
    # The grid's resample moves these logits little (one block, a class token over 64 positions):
    # what was built is told apart by which reference it is much nearer to.
    np.testing.assert_allclose(got, bilinear, atol=1e-4, rtol=1e-3)
    assert np.abs(got - bicubic).max() > 20 * np.abs(got - bilinear).max()
    for weights in ((), ("--weights", str(hf_folder))):  # the recorded file, or the folder given again
        rebuilt = run_cli("validate", str(out), "--rebuild", *weights)
        assert rebuilt.exit_code == 0, rebuilt.output + rebuilt.stderr


def test_dinov2_grid_resamples_bicubic_without_antialias_by_default(tmp_path):
    """DINOv2's own code (and transformers) downsample the grid bicubic without antialias."""
    args = dict(img_size=56, num_classes=3, global_pool="avg")  # avg: the grid reaches the logits directly
    folder = save_for_hf(tmp_path / "dino", "vit_small_patch14_dinov2", **args)
    out = tmp_path / "b"
    result = run_cli("build", "--weights", str(folder), "-p", "14", "--img-size", "28", "--out", str(out), "-q")
    assert result.exit_code == 0, result.output + result.stderr
    (variant,) = manifest(out)["variants"]
    assert variant["pos_resize"] == "bicubic" and variant["grid"] == [2, 2]
    x = pixels(28)
    with torch.no_grad():
        expected = pos_reference(folder, 28, "bicubic", False)(torch.from_numpy(x)).numpy()
        antialiased = pos_reference(folder, 28, "bicubic", True)(torch.from_numpy(x)).numpy()
    got = onnx_logits(out / variant["onnx"]["path"], x)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)
    assert np.abs(got - antialiased).max() > 20 * np.abs(got - expected).max()


def test_bad_pos_interpolation_is_one_error_line(hf_folder):
    result = run_cli("build", "--weights", str(hf_folder), "-p", "16", "--pos-interpolation", "nearest")
    assert result.exit_code == 2 and "--pos-interpolation" in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_class_names_and_malformed_fields_come_from_the_config(hf_folder, tmp_path):
    from exporter.build.record import class_names
    from exporter.core.errors import CheckpointError
    from exporter.source.load import load_source
    from exporter.source.model import SourceSpec

    names = ["cat", "dog", "owl", "eel", "yak"]
    folder = edit_config(hf_folder, tmp_path / "a", lambda c: c["pretrained_cfg"].update(label_names=names))
    source = load_source(SourceSpec(weights=folder))
    assert class_names(source, None) == tuple(names) and not source.assumptions
    folder = edit_config(hf_folder, tmp_path / "b", lambda c: c["pretrained_cfg"].update(label_names=names[:3]))
    with pytest.raises(CheckpointError, match="pretrained_cfg.label_names has 3 names but the weights have 5"):
        load_source(SourceSpec(weights=folder))
    folder = edit_config(hf_folder, tmp_path / "c", lambda c: c["pretrained_cfg"].update(input_size=[96, 96]))
    with pytest.raises(CheckpointError, match=r"pretrained_cfg.input_size must be \[channels, height, width\]"):
        load_source(SourceSpec(weights=folder))
    folder = edit_config(hf_folder, tmp_path / "d", lambda c: c["model_args"].update(class_token=False))
    with pytest.raises(CheckpointError, match="model_args.class_token False does not match the class token"):
        load_source(SourceSpec(weights=folder))
