"""The seed project's converter, as ``flexiexport resize`` and ``scripts/convert_patch_embed.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from exporter import pi_resize_patch_embed

from conftest import one_line_error, run_cli, tiny_model

ROOT = Path(__file__).resolve().parents[2]
KEY = "patch_embed.proj.weight"


@pytest.fixture()
def vit16(tmp_path) -> Path:
    """A tiny vit_base_patch16_224 in a training-style container with non-tensor entries."""
    sd = tiny_model("vit_base_patch16_224").state_dict()
    torch.save({"state_dict": sd, "epoch": 7, "arch": "vit"}, tmp_path / "vit-16.pt")
    return tmp_path / "vit-16.pt"


def test_seed_arguments_square(vit16, tmp_path):
    out = tmp_path / "vit-20.pt"
    result = run_cli("resize", "-i", str(vit16), "-o", str(out), "-n", KEY, "-ps", "20")
    assert result.exit_code == 0, result.output
    assert "Converted weights saved to" in result.output
    before, after = torch.load(vit16), torch.load(out)
    assert after["epoch"] == 7 and after["arch"] == "vit" and set(after) == set(before)
    assert after["state_dict"][KEY].shape == (32, 3, 20, 20)
    expected = pi_resize_patch_embed(before["state_dict"][KEY], (20, 20))
    assert torch.equal(after["state_dict"][KEY], expected)
    for key, value in before["state_dict"].items():
        if key != KEY:
            assert torch.equal(after["state_dict"][key], value), key


def test_seed_arguments_height_width(vit16, tmp_path):
    result = run_cli("resize", "-i", str(vit16), "-o", str(tmp_path / "vit-10-15.pt"), "-n", KEY, "-ps", "10", "15")
    assert result.exit_code == 0, result.output
    assert torch.load(tmp_path / "vit-10-15.pt")["state_dict"][KEY].shape == (32, 3, 10, 15)


def test_pos_embed_resampled_for_an_image_size_and_loads_strictly(vit16, tmp_path):
    out = tmp_path / "vit-32.pt"
    result = run_cli("resize", "-i", str(vit16), "-o", str(out), "-ps", "32", "--img-size", "224")
    assert result.exit_code == 0, result.output
    assert "pos_embed: (1, 197, 32) → (1, 50, 32)" in result.output
    net = tiny_model("vit_base_patch16_224", patch_size=32)
    net.load_state_dict(torch.load(out)["state_dict"], strict=True)


def test_flat_safetensors_keeps_its_format(tmp_path):
    sd = {k: v.contiguous() for k, v in tiny_model().state_dict().items()}
    save_file(sd, str(tmp_path / "f.safetensors"))
    result = run_cli(
        "resize",
        "-i",
        str(tmp_path / "f.safetensors"),
        "-o",
        str(tmp_path / "g.safetensors"),
        "-ps",
        "8",
        "--img-size",
        "240",
    )
    assert result.exit_code == 0, result.output
    out = load_file(str(tmp_path / "g.safetensors"))
    assert out[KEY].shape == (32, 3, 8, 8) and out["pos_embed"].shape == (1, 900, 32)  # no class slot (FlexiViT)


def test_refusals_are_one_line(vit16, tmp_path):
    cases = [
        (["-i", str(tmp_path / "nope.pt"), "-ps", "20"], "does not exist"),
        (["-i", str(vit16), "-o", str(vit16), "-ps", "20"], "is the input checkpoint itself"),
        (
            ["-i", str(vit16), "-o", str(tmp_path / "a.pt"), "-n", "head.weight", "-ps", "20"],
            "must be a 4-D conv weight",
        ),
        (["-i", str(vit16), "-o", str(tmp_path / "a.pt"), "-n", "nope", "-ps", "20"], "'nope' not found"),
        (["-i", str(vit16), "-o", str(tmp_path / "a.pt"), "-ps", "0"], "positive integer"),
        (["-i", str(vit16), "-o", str(tmp_path / "a.pt"), "-ps", "1", "2", "3"], "one size"),
        (["-i", str(vit16), "-o", str(tmp_path / "a.pt"), "-ps", "32", "--img-size", "200"], "does not divide"),
    ]
    for args, message in cases:
        result = run_cli("resize", *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in one_line_error(result), args
    assert not (tmp_path / "a.pt").exists()


def test_a_size_that_does_not_fit_is_refused_first_with_advice_resize_takes(vit16, tmp_path):
    """resize suggested '--img-size auto', which resize itself rejects; and it printed 'Resizing ...' first."""
    result = run_cli("resize", "-i", str(vit16), "-o", str(tmp_path / "a.pt"), "-ps", "20", "--img-size", "250")
    assert result.exit_code == 2
    error = one_line_error(result)
    assert "240 or 260" in error and "auto" not in error, error
    assert "Resizing" not in result.stdout


def test_output_is_an_ordinary_file(vit16, tmp_path):
    """The converted checkpoint was written with mode 0600 (mkstemp's), whatever the umask."""
    import os

    old = os.umask(0o022)
    try:
        assert run_cli("resize", "-i", str(vit16), "-o", str(tmp_path / "a.pt"), "-ps", "20").exit_code == 0
    finally:
        os.umask(old)
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o644


def test_script_matches_the_seed_command_line(vit16, tmp_path):
    out = tmp_path / "vit-20.pt"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "convert_patch_embed.py"),
        "-i",
        str(vit16),
        "-o",
        str(out),
        "-n",
        KEY,
        "-ps",
        "20",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert torch.load(out)["state_dict"][KEY].shape == (32, 3, 20, 20)
