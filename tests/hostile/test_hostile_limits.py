"""Hostile input (issue #11): sizes, counts, files and outputs that must end in exit 2 with one
``error:`` line, found before any heavy work, never in an internal error (exit 1) or a crash."""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from exporter.bundle.limits import Workload, check_memory, estimate_peak
from exporter.core.errors import UsageError, param
from exporter.core.machine import available_cores
from exporter.parity.compare import compare_outputs
from exporter.parity.tolerance import Tolerance

from conftest import TINY, build_demo, edit_manifest, one_line_error, run_cli, save_with_config, tiny_model

GB = 1e9


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The demo bundle, shared by the session: tests that change it change a copy (``bundle``)."""
    return build_demo(tmp_path_factory)


@pytest.fixture(scope="module")
def clamped_build(tmp_path_factory) -> Path:
    """The demo at patch 32, built with ``--threads 100000`` (clamped to the cores, not a crash)."""
    out = tmp_path_factory.mktemp("bundles") / "demo"
    result = run_cli("build", "--patch-sizes", "32", "--out", str(out), "--threads", "100000")
    assert result.exit_code == 0, result.output + result.stderr
    return out


@pytest.fixture()
def bundle(demo, tmp_path) -> Path:
    """A private copy of the demo bundle, free to tamper with."""
    copy = tmp_path / "demo"
    shutil.copytree(demo, copy)
    return copy


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


# 1. Memory estimate before allocation -------------------------------------------------------


def demo_workload(**changes) -> Workload:
    base = dict(
        params=500_000,
        weight_bytes=2_000_000,
        embed_dim=96,
        depth=4,
        num_heads=4,
        num_classes=10,
        img_size=(64, 64),
        patch_size=(8, 8),
        batch=8,
        images=32,
    )
    return Workload(**{**base, **changes})


def test_estimate_is_small_at_normal_sizes_and_grows_with_tokens_squared():
    small = estimate_peak(demo_workload())
    assert small.total < 0.2 * GB
    check_memory(demo_workload(), "the demo", available=4 * 2**30)  # passes: returns, no raise
    base = demo_workload(img_size=(224, 224), patch_size=(16, 16), embed_dim=768, depth=12, num_heads=12)
    vit_b = estimate_peak(replace_params(base, 86_000_000))
    assert 1 * GB < vit_b.total < 4 * GB and vit_b.largest[0] == "weights"
    huge = estimate_peak(demo_workload(img_size=(100000, 100000)))
    assert huge.largest[0] == "attention" and huge.total > 1e15
    assert huge.attention == 3 * 8 * 4 * 156_250_001**2 * 4


def replace_params(w: Workload, params: int) -> Workload:
    from dataclasses import replace

    return replace(w, params=params, weight_bytes=4 * params)


def test_refusal_names_the_estimate_the_memory_and_the_way_out():
    with pytest.raises(UsageError) as info:
        what = f"{param('img_size')} 100000 with patch 8"
        check_memory(demo_workload(img_size=(100000, 100000)), what, available=21 * 10**9)
    text = str(info.value)
    assert text.startswith("img_size 100000 with patch 8 needs about ")
    assert "GB (attention over 156,250,001 tokens" in text and "this machine has 21 GB available" in text
    assert text.endswith("use a smaller img_size or a larger patch")


def test_huge_img_size_is_refused_before_any_allocation(demo, tmp_path):
    # the demo's build has paid for the imports; what is left is reading the demo and the arithmetic.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.process_time()
    result = run_cli("build", "-p", "8", "--img-size", "100000", "--out", str(tmp_path / "out"))
    cpu_seconds = time.process_time() - start
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert result.exit_code == 2
    line = one_line_error(result)
    assert line.startswith("error: --img-size 100000 with patch 8 needs about ")
    assert "attention over 156,250,001 tokens" in line and "GB available" in line
    assert cpu_seconds < 1 and grown_mb < 100, (cpu_seconds, grown_mb)
    assert list(tmp_path.iterdir()) == []  # no bundle, no staging folder


def test_huge_parity_samples_are_refused_by_the_estimate(tmp_path):
    result = run_cli("build", "-p", "16", "--parity-samples", "1000000000", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    line = one_line_error(result)
    assert "needs about" in line and "2,000,000,000 input images of 64x64" in line and "--parity-samples" in line


def sized(m: dict, side: int) -> None:
    """Variant p8 at ``side``, its grid and ONNX input agreeing (the door checks that they do)."""
    v = m["variants"][0]
    v.update(img_size=[side, side], grid=[side // 8, side // 8], tokens=(side // 8) ** 2 + 1)
    v["onnx"]["inputs"][0]["shape"][2:] = [side, side]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda m: sized(m, 4096), "attention over 262,145 tokens"),
        (lambda m: sized(m, 16384), "attention over 4,194,305 tokens"),
        (lambda m: (m["options"].update(parity_samples=100_000), sized(m, 2048)), "200,000 input images"),
        (lambda m: (m["options"]["export"].update(batch=4096), sized(m, 2048)), "batch 4096"),
    ],
)
def test_huge_numbers_in_a_manifest_are_refused_at_validate(bundle, edit, expected):
    """Numbers inside the manifest schema's bounds that no machine here can hold: the estimate."""
    edit_manifest(bundle, edit)
    result = run_cli("validate", str(bundle))
    assert result.exit_code == 2
    line = one_line_error(result)
    assert "manifest.json" in line and "p8" in line and expected in line and "GB available" in line


@pytest.mark.parametrize(
    ("edit", "field", "bound"),
    [
        (lambda m: m["variants"][0].update(img_size=[100000, 100000]), "variants[0].img_size[0]", "16384"),
        (lambda m: m["options"].update(parity_samples=10**9), "options.parity_samples", "100000"),
        (lambda m: m["options"]["export"].update(batch=10**7), "options.export.batch", "4096"),
    ],
)
def test_numbers_beyond_the_manifest_bounds_are_named(bundle, edit, field, bound):
    edit_manifest(bundle, edit)
    line = one_line_error(run_cli("validate", str(bundle)))
    assert f"{field}: " in line and bound in line, line


def test_the_demo_and_a_tiny_model_fit_at_normal_sizes(tiny_flexivit):
    from exporter.build.options import BuildOptions
    from exporter.build.plan import check_build_memory, plan_variants
    from exporter.core.machine import available_memory
    from exporter.source.load import load_source
    from exporter.source.model import SourceSpec

    options = BuildOptions(patch_sizes=((8, 8), (16, 16), (48, 48)), source=SourceSpec(weights=tiny_flexivit))
    source = load_source(options.source)
    check_build_memory(source, plan_variants(source, options), options)  # no raise
    w = demo_workload(params=83_000, weight_bytes=332_000, embed_dim=32, depth=2, num_heads=2, img_size=(240, 240))
    assert estimate_peak(w).total < 0.5 * GB < (available_memory() or GB)


def test_bench_with_a_huge_batch_is_refused_before_timing(bundle):
    result = run_cli("bench", str(bundle), "--batch-sizes", "100000000", "--backends", "ort-cpu")
    assert result.exit_code == 2 and not result.stdout  # refused before any timing was printed
    line = one_line_error(result)
    assert "batch 100000000" in line and "needs about" in line and "--batch-sizes" in line


# 2. --threads ---------------------------------------------------------------------------------


def test_threads_above_the_cores_are_clamped_with_a_warning(clamped_build, caplog):
    from exporter.build.options import BuildOptions

    cores = available_cores()
    assert json.loads((clamped_build / "manifest.json").read_text())["options"]["threads"] == cores
    with caplog.at_level("WARNING", logger="exporter.bundle.limits"):
        assert BuildOptions(patch_sizes=((16, 16),), threads=100000).threads == cores
    assert f"--threads 100000 is more than the {cores} cores available; using {cores}" in caplog.text


def test_bench_threads_are_clamped_and_below_one_refused():
    from exporter.measure.options import BenchOptions

    assert BenchOptions(threads=100000).thread_count == available_cores()
    with pytest.raises(UsageError, match="^threads must be at least 1, got 0"):
        BenchOptions(threads=0)


def test_threads_below_one_is_usage_error(tmp_path):
    result = run_cli("build", "-p", "16", "--threads", "0", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "--threads must be at least 1, got 0" in one_line_error(result)


# 3. Checkpoints ------------------------------------------------------------------------------


def test_expanded_tensors_are_refused_before_they_are_materialised(tmp_path, tiny_state):
    state = dict(tiny_state)
    state["blocks.0.mlp.fc1.weight"] = torch.zeros(1).expand(10**9)  # 4 GB claimed, 4 bytes stored
    state["blocks.1.mlp.fc1.weight"] = torch.zeros(1, 1).expand(128, 32)  # right shape, still a view
    torch.save(state, tmp_path / "bomb.pt")
    assert (tmp_path / "bomb.pt").stat().st_size < 1_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run_cli("build", "--weights", str(tmp_path / "bomb.pt"), "-p", "16", "--out", str(tmp_path / "o"))
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 500
    assert result.exit_code == 2
    line = one_line_error(result)
    assert "'blocks.0.mlp.fc1.weight'" in line and "(1000000000,)" in line and "4.0 GB" in line
    assert "stored in 4 bytes" in line and ".contiguous()" in line
    resized = run_cli("resize", "-i", str(tmp_path / "bomb.pt"), "-o", str(tmp_path / "r.pt"), "-ps", "8")
    assert resized.exit_code == 2 and "'blocks.0.mlp.fc1.weight'" in one_line_error(resized)
    assert not (tmp_path / "r.pt").exists()


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.int32])
def test_non_float_kernel_is_refused_naming_key_and_dtype(tmp_path, tiny_state, dtype):
    state = dict(tiny_state)
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"].to(dtype)
    torch.save(state, tmp_path / "int.pt")
    result = run_cli("build", "--weights", str(tmp_path / "int.pt"), "-p", "16", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    name = str(dtype).replace("torch.", "")
    assert one_line_error(result) == (
        f"error: 'patch_embed.proj.weight' has dtype {name}; weights must be float16, bfloat16, float32 or float64"
    )
    resized = run_cli("resize", "-i", str(tmp_path / "int.pt"), "-o", str(tmp_path / "r.pt"), "-ps", "8")
    assert resized.exit_code == 2 and f"dtype {name}" in one_line_error(resized)


def test_non_float_tensor_elsewhere_is_refused(tmp_path, tiny_state):
    state = dict(tiny_state)
    state["blocks.1.norm1.weight"] = state["blocks.1.norm1.weight"].long()
    torch.save(state, tmp_path / "int.pt")
    result = run_cli("build", "--weights", str(tmp_path / "int.pt"), "-p", "16", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "'blocks.1.norm1.weight' has dtype int64" in one_line_error(result)


# 4. The config beside the weights -------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"architecture": "no_such_vit", "model_args": TINY}, "unknown timm architecture 'no_such_vit'"),
        ({"architecture": 7}, "'architecture' must be a timm model name (a string), got 7"),
        ({"model_args": {"embed_dim": "wide"}}, "model_args.embed_dim must be an integer, got 'wide'"),
        ({"model_args": {"mlp_ratio": [4]}}, "model_args.mlp_ratio must be a number, got [4]"),
        ({"model_args": {"depth": -2}}, "model_args.depth must be at least 1, got -2"),
        ({"model_args": {"bogus": 1}}, "model_args.bogus is not an argument of timm's VisionTransformer"),
        ({"architecture": "flexivit_small", "model_args": {**TINY, "bogus": 1}}, "model_args.bogus is not"),
        ({"model_args": [1, 2]}, "'model_args' must be a JSON object, got a list"),
        ({"pretrained_cfg": {"mean": "grey"}}, "pretrained_cfg.mean must be 3 numbers, got 'grey'"),
        ({"img_size": "big"}, "'img_size' must be N or [H, W] with positive integers, got 'big'"),
        ([1, 2, 3], "must be a JSON object ({...}), got a list"),
        ("{not json", "cannot read config"),
    ],
)
def test_bad_config_beside_the_weights_is_usage_error(tmp_path, tiny_state, config, expected):
    weights = weights_with_config(tmp_path, tiny_state, config)
    result = run_cli("build", "--weights", str(weights), "--num-heads", "2", "-p", "16", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2, result.output + result.stderr
    line = one_line_error(result)
    assert f"config {weights.with_suffix('.json')}" in line and expected in line


def test_config_json_in_the_folder_is_checked_too(tmp_path, tiny_state):
    torch.save(tiny_state, tmp_path / "w.pt")
    (tmp_path / "config.json").write_text(json.dumps({"model_args": {"bogus": 1}}))
    result = run_cli("build", "--weights", str(tmp_path / "w.pt"), "-p", "16", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and f"config {tmp_path / 'config.json'}:" in one_line_error(result)


# 5. Head counts -------------------------------------------------------------------------------


@pytest.mark.parametrize("heads", ["5", "3"])
def test_num_heads_that_do_not_divide_the_width(tmp_path, tiny_state, heads):
    torch.save(tiny_state, tmp_path / "w.pt")
    result = run_cli("build", "--weights", str(tmp_path / "w.pt"), "--num-heads", heads, "-p", "16")
    assert result.exit_code == 2
    assert one_line_error(result) == (
        f"error: --num-heads {heads} does not divide the width 32 of the weights; valid head counts: 1, 2, 4, 8, 16, 32"
    )


@pytest.mark.parametrize("heads", ["0", "-2"])
def test_num_heads_below_one(heads):
    result = run_cli("build", "--num-heads", heads, "-p", "16")
    assert result.exit_code == 2 and f"--num-heads must be a positive integer, got {heads}" in one_line_error(result)


def test_config_num_heads_that_do_not_divide_the_width(tmp_path, tiny_state):
    weights = weights_with_config(tmp_path, tiny_state, {"model_args": {**TINY, "num_heads": 5}})
    result = run_cli("build", "--weights", str(weights), "-p", "16", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert one_line_error(result) == (
        f"error: config {weights.with_suffix('.json')}: model_args.num_heads 5 does not divide the width 32 "
        "of the weights; valid head counts: 1, 2, 4, 8, 16, 32"
    )


def test_inferred_head_count_always_divides_the_width(tmp_path):
    from exporter.source.load import load_source
    from exporter.source.model import SourceSpec

    path = save_with_config(tiny_model(embed_dim=200, num_heads=5, num_classes=3), tmp_path / "w200.pt")
    source = load_source(SourceSpec(weights=path))
    assert 200 % source.num_heads == 0 and source.assumptions[0].what == "heads"


# 6. --seed ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_seed_out_of_range(seed):
    result = run_cli("build", "-p", "16", "--seed", seed)
    assert result.exit_code == 2
    assert one_line_error(result) == f"error: --seed must be between 0 and 4294967295, got {seed}"


# 7. bench options -----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "bad"), [("abc", "'abc'"), ("0", "0"), ("-1", "-1"), ("1,x", "'x'")])
def test_bench_batch_sizes_must_be_positive_integers(demo, value, bad):
    result = run_cli("bench", str(demo), "--batch-sizes", value)
    assert result.exit_code == 2
    assert one_line_error(result) == f"error: --batch-sizes must be positive integers (e.g. 1 8 or 1,8), got {bad}"


def test_bench_unknown_backend_names_the_valid_ones(demo):
    result = run_cli("bench", str(demo), "--backends", "nosuch")
    assert result.exit_code == 2
    line = one_line_error(result)
    assert "unknown backend 'nosuch'" in line and "torch, torch-compile, ort-cpu" in line


# 8. Decompression bombs ----------------------------------------------------------------------


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A real 1x1 PNG whose header is rewritten to claim ``width`` x ``height`` (CRC fixed)."""
    from PIL import Image

    Image.new("P", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 4  # signature, then the IHDR chunk's length field
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(("side", "what"), [(30000, "bomb"), (10000, "warning")])
def test_decompression_bomb_is_refused(tmp_path, side, what):
    from exporter.bundle.manifest import Preprocessing
    from exporter.runtime.images import preprocess

    bomb = png_claiming(tmp_path / f"{what}.png", side, side)
    with pytest.raises(UsageError) as info:
        preprocess(bomb, (64, 64), Preprocessing())
    assert str(info.value) == (
        f"image {str(bomb)!r} has {side * side:,} pixels, more than the 89,478,485 this tool decodes "
        "(a decompression bomb?); shrink or remove it"
    )


def test_bomb_in_calib_dir_is_refused_before_the_build_works(tmp_path):
    (tmp_path / "calib").mkdir()
    png_claiming(tmp_path / "calib" / "a.png", 30000, 30000)
    result = run_cli("build", "-p", "16", "--calib-dir", str(tmp_path / "calib"), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "export" not in result.output + result.stderr  # refused before any variant was exported
    assert "a.png' has 900,000,000 pixels" in one_line_error(result)
    assert not (tmp_path / "o").exists()


def test_bomb_in_evaluate_data_is_refused(bundle, tmp_path):
    (tmp_path / "data" / "3").mkdir(parents=True)
    png_claiming(tmp_path / "data" / "3" / "x.png", 30000, 30000)
    result = run_cli("evaluate", str(bundle), "--data", str(tmp_path / "data"))
    assert result.exit_code == 2 and "x.png' has 900,000,000 pixels" in one_line_error(result)


# 9. resize outputs ----------------------------------------------------------------------------


@pytest.fixture()
def checkpoint(tmp_path, tiny_state) -> Path:
    torch.save(tiny_state, tmp_path / "in.pt")
    return tmp_path / "in.pt"


def test_resize_output_that_is_a_folder(checkpoint, tmp_path):
    (tmp_path / "dir").mkdir()
    result = run_cli("resize", "-i", str(checkpoint), "-o", str(tmp_path / "dir"), "-ps", "8", "--force")
    assert result.exit_code == 2 and "Resizing" not in result.stdout
    assert one_line_error(result) == f"error: -o {str(tmp_path / 'dir')!r} is a folder; give a file path"


@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink"])
def test_resize_never_overwrites_its_input(checkpoint, tmp_path, spelling):
    before = checkpoint.read_bytes()
    out = {
        "same": checkpoint,
        "dotted": tmp_path / "." / "sub" / ".." / "in.pt",
        "symlink": tmp_path / "link.pt",
    }[spelling]
    (tmp_path / "sub").mkdir()
    if spelling == "symlink":
        out.symlink_to(checkpoint)
    result = run_cli("resize", "-i", str(checkpoint), "-o", str(out), "-ps", "8", "--force")
    assert result.exit_code == 2 and "Resizing" not in result.stdout
    assert "is the input checkpoint itself; write to another file" in one_line_error(result)
    assert checkpoint.read_bytes() == before


def test_resize_checks_arguments_before_announcing(checkpoint, tmp_path):
    (tmp_path / "taken.pt").write_bytes(b"x")
    result = run_cli("resize", "-i", str(checkpoint), "-o", str(tmp_path / "taken.pt"), "-ps", "8")
    assert result.exit_code == 2 and "Resizing" not in result.stdout and "already exists" in one_line_error(result)
    missing = run_cli("resize", "-i", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "r.pt"), "-ps", "8")
    assert missing.exit_code == 2 and "Resizing" not in missing.stdout


# 10. Out of disk space ------------------------------------------------------------------------


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_writing_the_bundle(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", enospc)  # the seam: every atomic write fsyncs its file
    result = run_cli("build", "-p", "32", "--out", str(tmp_path / "out"), "--quiet")
    assert result.exit_code == 2
    line = one_line_error(result)
    assert line.startswith(f"error: no space left on device while writing {tmp_path}")
    assert line.endswith("(free some space or choose another --out)")
    assert list(tmp_path.iterdir()) == []  # staging folder removed, nothing half-written


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full here")
def test_disk_full_on_a_real_full_device():
    from exporter.core.errors import DiskFullError
    from exporter.core.files import full_disk_as_usage_error

    # Every write to /dev/full fails with ENOSPC (seen when the buffered file is closed).
    with (
        pytest.raises(DiskFullError) as info,
        full_disk_as_usage_error(Path("/dev/full")),
        open("/dev/full", "wb") as handle,
    ):
        handle.write(b"x")
    assert str(info.value) == "no space left on device while writing /dev/full"


def test_disk_full_while_resizing_names_the_output(checkpoint, tmp_path, monkeypatch):
    def full(obj, f, *args, **kwargs):  # torch.save as it fails when the quota is used up
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(torch, "save", full)
    result = run_cli("resize", "-i", str(checkpoint), "-o", str(tmp_path / "r.pt"), "-ps", "8")
    assert result.exit_code == 2
    assert one_line_error(result) == (
        f"error: no space left on device while writing {tmp_path / 'r.pt'} (free some space or choose another -o)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pt"]


def test_disk_full_from_any_write_site_is_exit_2():
    """A write we do not wrap (a library's own), its OSError wrapped in another exception."""
    import click
    from click.testing import CliRunner

    from exporter.cli.group import FlexiGroup

    @click.group(cls=FlexiGroup)
    def group() -> None: ...

    @group.command()
    def triton() -> None:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/repo/m/1/model.onnx")
        except OSError as exc:
            raise RuntimeError("serialising the model failed") from exc

    result = CliRunner().invoke(group, ["triton"])
    assert result.exit_code == 2
    assert one_line_error(result) == (
        "error: no space left on device while writing /repo/m/1/model.onnx (free some space or choose another --out)"
    )


# 11. Non-finite outputs -----------------------------------------------------------------------


def test_all_nan_outputs_agree_with_nothing():
    ref = np.random.default_rng(0).normal(size=(8, 10)).astype(np.float32)
    ref[:, 0] += 10  # class 0 on top everywhere: a NaN row used to "agree" with it
    cmp = compare_outputs(ref, np.full_like(ref, np.nan))
    assert not cmp and cmp.top1_agreement == 0.0 and cmp.top5_agreement == 0.0 and cmp.min_cosine == 0.0
    assert "non-finite outputs (NaN or Inf) in 8 of 8 samples" in cmp.failures


def test_some_inf_rows_count_as_disagreements():
    ref = np.random.default_rng(1).normal(size=(8, 10)).astype(np.float32)
    cand = ref.copy()
    cand[2, 3] = np.inf
    cand[5, 0] = np.nan
    cmp = compare_outputs(ref, cand, Tolerance(atol=1.0, rtol=1.0, min_cosine=0.0, min_top1=0.0))
    assert cmp.top1_agreement == 6 / 8 and cmp.top5_agreement == 6 / 8 and cmp.min_cosine == 0.0
    assert cmp.failures == ("non-finite outputs (NaN or Inf) in 2 of 8 samples",)


# 12. validate prints the reason ---------------------------------------------------------------


def test_validate_prints_why_a_variant_failed(bundle):
    edit_manifest(bundle, lambda m: [v["onnx"]["tolerance"].update(atol=1e-12, rtol=0.0) for v in m["variants"]])
    result = run_cli("validate", str(bundle))
    assert result.exit_code == 3
    assert re.search(r"│ ✗ │ p8 +│ ok +│ +[0-9.e+-]+ │", result.stdout), result.stdout  # its numbers, in the table
    why = [line for line in result.stdout.splitlines() if line.startswith("✗ p8: ")]
    assert why and "exceeds atol 1e-12" in why[0]
