"""``bench`` and ``evaluate`` on the demo bundle (short timing runs; speed targets live in benchmarks)."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from exporter.build.variant import VariantSpec, make_variant
from exporter.core.errors import UsageError
from exporter.measure.options import BenchOptions
from exporter.source.load import load_source
from exporter.source.model import SourceSpec
from exporter.source.resampling import default_patch_resize, default_pos_resize

from conftest import QUICK_BENCH, build_demo, copy_into, one_line_error, run_cli, tiny_model


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """This module's own copy of the demo bundle: bench and evaluate write their results into it."""
    return copy_into(build_demo(tmp_path_factory), tmp_path_factory.mktemp("b"))


def test_a_later_bench_run_merges_into_bench_json(bundle, tmp_path):
    """A later run with other options used to overwrite bench.json (and so the plot) silently."""
    import shutil

    copy = tmp_path / "demo"
    shutil.copytree(bundle, copy)
    args = ("bench", str(copy), *QUICK_BENCH)

    def rows():
        return {
            (t["backend"], t["variant"], t["batch"]): t
            for t in json.loads((copy / "bench.json").read_text())["timings"]
        }

    assert run_cli(*args, "--backends", "ort-cpu", "--batch-sizes", "1", "2").exit_code == 0
    first = rows()
    result = run_cli(*args, "--backends", "torch", "ort-cpu", "--batch-sizes", "1")
    assert result.exit_code == 0, result.output + result.stderr
    second = rows()
    variants = ("p8", "p16", "p32")
    assert set(second) == {(b, v, 1) for b in ("torch", "ort-cpu") for v in variants} | {
        ("ort-cpu", v, 2) for v in variants
    }
    assert all(second[("ort-cpu", v, 2)] == first[("ort-cpu", v, 2)] for v in variants)  # kept as measured
    assert all(second[("ort-cpu", v, 1)]["measured_at"] >= first[("ort-cpu", v, 1)]["measured_at"] for v in variants)
    assert all(t["measured_at"] and t["threads"] >= 1 for t in second.values())
    assert "6 rows measured now (3 replacing earlier ones), 3 earlier rows kept (ort-cpu)" in result.stdout


def test_bench_writes_json_plot_and_lists_skipped_backends(bundle):
    result = run_cli(
        "bench",
        str(bundle),
        "--backends",
        "torch",
        "ort-cpu",
        "ort-cuda",
        "tensorrt",
        "--batch-sizes",
        "1",
        "2",
        *QUICK_BENCH,
    )
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads((bundle / "bench.json").read_text())
    cases = {(t["backend"], t["variant"], t["batch"]) for t in report["timings"]}
    assert cases == {(b, v, n) for b in ("torch", "ort-cpu") for v in ("p8", "p16", "p32") for n in (1, 2)}
    for t in report["timings"]:
        assert t["runs"] >= 2 and 0 < t["p50_ms"] <= t["p99_ms"] and t["images_per_s"] > 0
        assert t["achieved_gflops"] == pytest.approx(t["gflops_per_image"] * t["batch"] / t["p50_ms"] * 1e3)
    assert report["ceiling"]["ort_matmul_gflops"] > 0 and report["ceiling"]["torch_sgemm_gflops"] > 0
    assert {s["backend"] for s in report["skipped"]} >= {"ort-cuda", "tensorrt"}
    assert report["machine"]["threads"] >= 1 and report["machine"]["cpu"]
    assert "skipped ort-cuda" in result.stdout and (bundle / "tradeoff.png").stat().st_size > 10_000


def test_evaluate_demo_with_compare_resize(bundle):
    result = run_cli("evaluate", str(bundle), "--compare-resize", "--quiet")
    assert result.exit_code == 0, result.output + result.stderr
    evaluation = json.loads((bundle / "eval.json").read_text())
    rows = {(r["variant"], r["backend"]): r for r in evaluation["results"]}
    assert evaluation["samples"] == 360 and len(rows) == 9
    for p in ("p8", "p16", "p32"):
        assert rows[(p, "pytorch")]["top1"] == rows[(p, "onnxruntime")]["top1"] >= 0.9
        assert rows[(p, "pytorch")]["top5"] >= rows[(p, "pytorch")]["top1"]
    # The demo stores a 32x32 kernel: p32 needs no resize, so naive and PI agree there; at p8
    # plain interpolation loses the token scale that PI-resize keeps.
    assert rows[("p32", "pytorch (naive resize)")]["top1"] == rows[("p32", "pytorch")]["top1"]
    assert rows[("p8", "pytorch (naive resize)")]["top1"] < rows[("p8", "pytorch")]["top1"] - 0.05


def test_evaluate_image_folder_and_refusals(bundle, tmp_path):
    from PIL import Image

    from exporter.source.demo import load_demo_digits

    digits, labels = load_demo_digits("test")
    for i in range(20):
        folder = tmp_path / "data" / str(labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits[i] * 15).astype("uint8")).resize((64, 64), Image.Resampling.BILINEAR).save(
            folder / f"{i}.png"
        )
    # Class folders must cover 0..9 for the indices to match: add the empty ones.
    for c in range(10):
        (tmp_path / "data" / str(c)).mkdir(exist_ok=True)
    result = run_cli("evaluate", str(bundle), "--data", str(tmp_path / "data"), "--quiet")
    assert result.exit_code == 0, result.output + result.stderr
    assert json.loads((bundle / "eval.json").read_text())["samples"] == 20
    result = run_cli("evaluate", str(bundle), "--data", str(tmp_path / "nope"))
    assert result.exit_code == 2 and "is not a folder" in one_line_error(result)
    result = run_cli("evaluate", str(bundle), "--limit", "0")
    assert result.exit_code == 2 and "--limit" in one_line_error(result)


def save_digits(folder, names):
    """Six held-out demo digits per folder name, rendered as the demo was trained."""
    from PIL import Image

    from exporter.source.demo import digits_to_uint8, load_demo_digits

    digits, labels = load_demo_digits("test")
    for name, index in names.items():
        (folder / name).mkdir(parents=True)
        chosen = [i for i, label in enumerate(labels) if label == index][:6] if index is not None else range(6)
        for i in chosen:
            Image.fromarray(digits_to_uint8(digits[i : i + 1])[0]).save(folder / name / f"{i}.png")


def test_evaluate_matches_class_folders_by_name_and_refuses_the_rest(bundle, tmp_path):
    """cat/dog/zebra on the digits model were mapped to 0/1/2 by sorted index, in silence; three
    digit folders (3, 7, 9) were mapped to classes 0, 1, 2."""
    save_digits(tmp_path / "pets", {"cat": None, "dog": None, "zebra": None})
    line = one_line_error(run_cli("evaluate", str(bundle), "--data", str(tmp_path / "pets"), "-q"))
    assert "the class folders cat, dog, zebra match no class of the model (its classes: 0, 1, 2" in line
    save_digits(tmp_path / "mixed", {"3": 3, "owl": None})
    result = run_cli("evaluate", str(bundle), "--data", str(tmp_path / "mixed"), "-q")
    assert result.exit_code == 2 and "the class folders owl match no class" in one_line_error(result)

    save_digits(tmp_path / "some", {"3": 3, "7": 7, "9": 9})
    result = run_cli("evaluate", str(bundle), "--data", str(tmp_path / "some"), "-q")
    assert result.exit_code == 0, result.output + result.stderr
    written = json.loads((bundle / "eval.json").read_text())
    assert written["samples"] == 18 and "matched by class name" in written["data"]
    p32 = next(r for r in written["results"] if r["variant"] == "p32" and r["backend"] == "onnxruntime")
    assert p32["top1"] >= 0.8  # by sorted index (3 -> 0, 7 -> 1, 9 -> 2) it was 0


def test_class_folders_by_index_wordnet_id_or_sorted_order(tmp_path):
    from exporter.measure.evaluate import class_indices

    assert class_indices(["0", "10", "2"], [], 11, tmp_path) == ({"0": 0, "10": 10, "2": 2}, "matched by index")
    names = [f"class {i}" for i in range(1000)]
    found, how = class_indices(["n01443537", "n01440764", "class 5"], names, 1000, tmp_path)
    assert found == {"n01443537": 1, "n01440764": 0, "class 5": 5} and how == "matched by class name and WordNet id"
    # No class names in the manifest: the old layout, sorted folders = class indices.
    assert class_indices(["b", "a"], [], 2, tmp_path) == ({"b": 1, "a": 0}, "classes in sorted folder order")
    with pytest.raises(UsageError, match="the class folders 12 match no class"):
        class_indices(["1", "12"], ["x"] * 10, 10, tmp_path)


def test_bench_refusals(bundle, tmp_path):
    result = run_cli("bench", str(bundle), "--backends", "tpu")
    assert result.exit_code == 2 and "unknown backend 'tpu'" in one_line_error(result)
    result = run_cli("bench", str(tmp_path))
    assert result.exit_code == 2 and "not a flexiexport bundle" in one_line_error(result)
    with pytest.raises(UsageError):
        BenchOptions(batch_sizes=(0,))


@pytest.mark.parametrize(
    ("name", "patch", "img"),
    [("flexivit_small", 16, 240), ("vit_base_patch16_224", 8, 224), ("vit_base_patch16_224", 32, 224)],
)
def test_gflops_formula_matches_a_flop_counter(tmp_path, name, patch, img):
    """Our closed-form count vs torch's FlopCounterMode on the real module, within 5 %."""
    model = tiny_model(name, embed_dim=192, num_heads=3, depth=2)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    source = load_source(SourceSpec(weights=tmp_path / "w.pt", num_heads=3))
    spec = VariantSpec((patch, patch), (img, img), default_patch_resize("vit"), default_pos_resize("vit"))
    variant = make_variant(source, spec)
    for module in variant.model.modules():  # explicit q·kᵀ and attn·v: the counter skips CPU fused attention
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        variant.model(torch.zeros(1, 3, img, img))
    counted = counter.get_total_flops() / 1e9
    assert variant.gflops == pytest.approx(counted, rel=0.05)


def test_each_row_is_measured_against_the_ceiling_of_its_precision():
    from exporter.measure.bench import Ceiling

    c = Ceiling(2048, 100.0, 90.0, bf16_matmul_gflops=300.0, int8_matmul_gops=400.0)
    assert [c.for_backend(b) for b in ("ort-cpu", "openvino", "torch")] == [100.0] * 3
    assert c.for_backend("openvino-bf16") == 300.0 and c.for_backend("ort-cpu int8") == 400.0
    assert c.for_backend("ort-cpu fp16") is None and c.for_backend("ort-cuda") is None
    assert Ceiling(2048, 100.0, 90.0).for_backend("openvino-bf16") is None  # a CPU without bf16
