"""Checkpoint loading: formats, containers, architecture inference and every refusal."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from exporter.core.errors import CheckpointError, EnvironmentMissing, UsageError
from exporter.source.load import load_source
from exporter.source.model import SourceSpec
from exporter.source.readers import unwrap_state_dict

from conftest import TINY, one_line_error, run_cli, tiny_model


def test_named_checkpoint_with_config(tiny_flexivit):
    src = load_source(SourceSpec(weights=tiny_flexivit))
    assert (src.model_name, src.family, src.name) == ("flexivit_small", "flexivit", "tiny_flexivit")
    assert (src.patch_size, src.pos_grid, src.img_size) == ((16, 16), (15, 15), (240, 240))
    assert (src.embed_dim, src.depth, src.num_heads, src.num_classes, src.num_pos_prefix) == (32, 2, 2, 10, 0)
    assert src.preprocessing.crop_pct == 0.95 and src.preprocessing.source == "timm flexivit_small"
    assert src.origin.sha256 and len(src.origin.sha256) == 64
    assert [a.what for a in src.assumptions] == ["preprocessing"]  # the config has no pretrained_cfg


def test_architecture_inferred_from_weights_alone(tiny_vit):
    src = load_source(SourceSpec(weights=tiny_vit))
    assert src.model_name is None and src.family == "vit"
    assert (src.patch_size, src.pos_grid, src.img_size) == ((16, 16), (14, 14), (224, 224))
    assert (src.embed_dim, src.depth, src.num_classes, src.num_pos_prefix) == (64, 2, 7, 1)
    assert src.num_heads == 1 and str(src.assumptions[0]) == "heads 1 (pass --num-heads or a config.json)"
    assert load_source(SourceSpec(weights=tiny_vit, num_heads=4)).num_heads == 4


def test_infers_flexivit_layout_and_registers(tmp_path):
    model = tiny_model("vit_base_patch16_reg4_gap_256")
    torch.save(model.state_dict(), tmp_path / "reg.pt")
    src = load_source(SourceSpec(weights=tmp_path / "reg.pt", num_heads=2))
    assert src.model_args["reg_tokens"] == 4 and src.model_args["no_embed_class"] is True
    assert src.model_args["global_pool"] == "avg" and src.num_pos_prefix == 0


@pytest.mark.parametrize(
    ("wrap", "where"),
    [
        (lambda sd: {"state_dict": sd, "epoch": 3}, "['state_dict']"),
        (lambda sd: {"model": sd, "optimizer": {}}, "['model']"),
        (lambda sd: {f"module.{k}": v for k, v in sd.items()}, "prefix 'module.' removed"),
        (lambda sd: {"state_dict": {f"_orig_mod.{k}": v for k, v in sd.items()}}, "prefix '_orig_mod.' removed"),
    ],
)
def test_unwraps_common_containers(tmp_path, wrap, where):
    sd = tiny_model().state_dict()
    torch.save(wrap(sd), tmp_path / "w.pth")
    src = load_source(SourceSpec(weights=tmp_path / "w.pth", num_heads=2))
    assert where in src.origin.container
    assert torch.equal(src.state_dict["patch_embed.proj.weight"], sd["patch_embed.proj.weight"])


def test_ema_weights_only_when_asked(tmp_path):
    sd = tiny_model().state_dict()
    ema = {k: v + 1 for k, v in sd.items()}
    torch.save({"model": sd, "model_ema": ema}, tmp_path / "train.ckpt")
    plain = load_source(SourceSpec(weights=tmp_path / "train.ckpt", num_heads=2))
    chosen = load_source(SourceSpec(weights=tmp_path / "train.ckpt", num_heads=2, use_ema=True))
    assert plain.origin.container == "['model']" and chosen.origin.container == "['model_ema']"
    assert torch.equal(chosen.state_dict["pos_embed"], ema["pos_embed"])


def test_safetensors(tmp_path):
    sd = {k: v.contiguous() for k, v in tiny_model().state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    src = load_source(SourceSpec(weights=tmp_path / "w.safetensors", num_heads=2))
    assert src.origin.file_format == "safetensors" and src.num_pos_prefix == 0


def test_pickled_code_needs_trust(tmp_path):
    torch.save({"state_dict": tiny_model().state_dict(), "args": argparse.Namespace(lr=1)}, tmp_path / "p.pt")
    with pytest.raises(CheckpointError, match="pass trust_checkpoint"):
        load_source(SourceSpec(weights=tmp_path / "p.pt"))
    assert load_source(SourceSpec(weights=tmp_path / "p.pt", trust_checkpoint=True, num_heads=2)).depth == 2


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file(tmp_path, tiny_flexivit, suffix):
    data = tiny_flexivit.read_bytes()
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in torch.load(tiny_flexivit).items()}, str(tmp_path / "full.safetensors"))
        data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_source(SourceSpec(weights=tmp_path / f"cut{suffix}"))


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.pt").write_text("hello, I am not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_source(SourceSpec(weights=tmp_path / "notes.pt"))
    (tmp_path / "w.onnx").write_text("x")
    with pytest.raises(CheckpointError, match="unsupported weights file"):
        load_source(SourceSpec(weights=tmp_path / "w.onnx"))


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_source(SourceSpec(weights=tmp_path / "nope.pt"))
    with pytest.raises(CheckpointError, match="is a folder without model.safetensors or pytorch_model.bin"):
        load_source(SourceSpec(weights=tmp_path))


def test_no_patch_embedding(tmp_path):
    sd = {k: v for k, v in tiny_model().state_dict().items() if not k.startswith("patch_embed")}
    torch.save(sd, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="no patch embedding.*patch_embed.proj.weight"):
        load_source(SourceSpec(weights=tmp_path / "w.pt"))


def test_missing_and_unexpected_keys_are_named(tmp_path):
    sd = tiny_model().state_dict()
    del sd["blocks.1.norm2.bias"]
    sd["blocks.0.extra"] = torch.zeros(1)
    torch.save(sd, tmp_path / "w.pt")
    with pytest.raises(CheckpointError) as info:
        load_source(SourceSpec(weights=tmp_path / "w.pt", num_heads=2))
    assert "missing keys: blocks.1.norm2.bias" in str(info.value)
    assert "unexpected keys: blocks.0.extra" in str(info.value)


def test_model_name_is_checked_against_weights(tiny_vit):
    with pytest.raises(CheckpointError, match="do not match timm vit_small_patch16_224.*expects"):
        load_source(SourceSpec(weights=tiny_vit, model_name="vit_small_patch16_224"))


def test_unknown_model_name_suggests_close_ones(tiny_vit):
    with pytest.raises(UsageError, match="unknown timm model 'flexivit_smal'.*flexivit_small"):
        load_source(SourceSpec(weights=tiny_vit, model_name="flexivit_smal"))


def test_unknown_model_name_suggests_its_own_family_first():
    """``--model vit_nosuch`` suggested convit_* and crossvit_* names (a substring search on 'vit')."""
    result = run_cli("build", "--model", "vit_nosuch", "-p", "16")
    assert result.exit_code == 2
    suggested = one_line_error(result).split("similar timm models: ")[1].split(", ")
    assert len(suggested) == 8 and all(name.startswith("vit_") for name in suggested), suggested
    line = one_line_error(run_cli("build", "--model", "vit_base_patch16_244", "-p", "16"))
    assert line.split("similar timm models: ")[1].startswith("vit_base_patch16_224, ")


def test_pretrained_without_network_is_an_environment_error(monkeypatch):
    import huggingface_hub.constants

    # The hub reads HF_HUB_OFFLINE at import; setting the constant is what the variable does.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(EnvironmentMissing, match="no network access.*pass weights FILE"):
        load_source(SourceSpec(model_name="vit_tiny_patch16_224", pretrained=True))


def test_spec_refusals():
    with pytest.raises(UsageError, match="pretrained needs model_name NAME"):
        SourceSpec(pretrained=True)
    with pytest.raises(UsageError, match="either pretrained or weights"):
        SourceSpec(weights=Path("w.pt"), model_name="vit_tiny_patch16_224", pretrained=True)
    with pytest.raises(UsageError, match="model_name vit_tiny_patch16_224 needs weights FILE or pretrained"):
        load_source(SourceSpec(model_name="vit_tiny_patch16_224"))


def test_state_dict_holding_no_tensors():
    with pytest.raises(CheckpointError, match="no tensors"):
        unwrap_state_dict({"epoch": 3})
    with pytest.raises(CheckpointError, match="not a state dict"):
        unwrap_state_dict([1, 2])


def to_big_vision_npz(model: torch.nn.Module, path: Path) -> Path:
    """Write ``model`` in big_vision's ViT .npz layout (the inverse of timm's reader)."""
    d = model.embed_dim
    heads = model.blocks[0].attn.num_heads
    arrays = {
        "params/embedding/kernel": model.patch_embed.proj.weight.permute(2, 3, 1, 0),
        "params/embedding/bias": model.patch_embed.proj.bias,
        "params/cls": model.cls_token,
        "params/pos_embedding": model.pos_embed,
        "params/Transformer/encoder_norm/scale": model.norm.weight,
        "params/Transformer/encoder_norm/bias": model.norm.bias,
        "params/head/kernel": model.head.weight.T,
        "params/head/bias": model.head.bias,
    }
    for i, block in enumerate(model.blocks):
        p = f"params/Transformer/encoderblock_{i}/"
        mha = p + "MultiHeadDotProductAttention_0/"
        for j, n in enumerate(("query", "key", "value")):
            arrays[mha + f"{n}/kernel"] = block.attn.qkv.weight[j * d : (j + 1) * d].T.reshape(d, heads, -1)
            arrays[mha + f"{n}/bias"] = block.attn.qkv.bias[j * d : (j + 1) * d].reshape(heads, -1)
        arrays[mha + "out/kernel"] = block.attn.proj.weight.T.reshape(heads, -1, d)
        arrays[mha + "out/bias"] = block.attn.proj.bias
        for k, norm in enumerate((block.norm1, block.norm2)):
            arrays[p + f"LayerNorm_{k}/scale"], arrays[p + f"LayerNorm_{k}/bias"] = norm.weight, norm.bias
        for r, fc in enumerate((block.mlp.fc1, block.mlp.fc2)):
            arrays[p + f"MlpBlock_0/Dense_{r}/kernel"], arrays[p + f"MlpBlock_0/Dense_{r}/bias"] = fc.weight.T, fc.bias
    np.savez(path, **{k: v.detach().numpy() for k, v in arrays.items()})
    return path


def test_big_vision_npz_keeps_its_own_kernel_and_grid(tmp_path):
    """A FlexiViT-style npz (32x32 kernel, 7x7 grid) reaches us unresampled and computes the same logits."""
    model = tiny_model(patch_size=32, img_size=224, num_classes=5)
    npz = to_big_vision_npz(model, tmp_path / "flexi.npz")
    (tmp_path / "flexi.json").write_text(json.dumps({"model_args": {**TINY, "num_classes": 5}}))
    with pytest.raises(UsageError, match="pass model_name NAME"):
        load_source(SourceSpec(weights=npz))
    src = load_source(SourceSpec(weights=npz, model_name="flexivit_small"))
    assert (src.patch_size, src.pos_grid, src.img_size, src.origin.file_format) == ((32, 32), (7, 7), (240, 240), "npz")
    for key, value in model.state_dict().items():
        assert torch.allclose(src.state_dict[key], value, atol=1e-6), key


def test_corrupt_npz(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="bad.npz"):
        load_source(SourceSpec(weights=tmp_path / "bad.npz", model_name="flexivit_small"))


def test_state_digest_identifies_weights_without_a_file(tiny_flexivit):
    """Hub downloads have no file to hash: the manifest's source sha256 comes from the tensors."""
    from dataclasses import replace

    from exporter.build.stages import state_digest

    src = load_source(SourceSpec(weights=tiny_flexivit))
    digest = state_digest(src)
    assert digest == state_digest(src) and len(digest) == 64
    changed = dict(src.state_dict)
    changed["pos_embed"] = changed["pos_embed"] + 1e-3
    assert state_digest(replace(src, state_dict=changed)) != digest
    halves = {k: v.to(torch.bfloat16) for k, v in src.state_dict.items()}
    assert state_digest(replace(src, state_dict=halves)) != digest


def test_a_head_count_from_the_config_is_not_listed_as_assumed():
    """The demo's config says 4 heads; the manifest used to add 'assumed: num_heads=1 (head dim 64...)'."""
    from exporter.source.demo import DEMO_WEIGHTS
    from exporter.source.load import load_source
    from exporter.source.model import SourceSpec

    source = load_source(SourceSpec(DEMO_WEIGHTS))
    assert source.num_heads == 4
    assert source.inferred == ()
