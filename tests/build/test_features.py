"""Feature models (no classifier, ``num_classes`` 0): output ``embeddings``, judged by cosine and
|Δ| only, printed and returned as embeddings; and every variant's agreement with the native patch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import QUICK_BENCH, edit_manifest, one_line_error, refused, run_cli, tiny_model

WIDTH = 32


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real photographs (scikit-image's), as a --calib-dir folder."""
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def headless_weights(tmp_path_factory) -> Path:
    """A tiny timm ViT built with ``num_classes=0`` (a backbone): kernel 16, native 32, weights only."""
    model = tiny_model("vit_base_patch16_224", num_classes=0, img_size=32, embed_dim=WIDTH, num_heads=2)
    path = tmp_path_factory.mktemp("ckpt") / "headless.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def features(headless_weights, photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("features") / "b"
    args = ("-p", "8", "16", "--weights", str(headless_weights), "--num-heads", "2", "--calib-dir", str(photos))
    result = run_cli("build", *args, "--parity-samples", "4", "--out", str(out))
    assert result.exit_code == 0, result.output + result.stderr
    (out.parent / "build.txt").write_text(result.stdout + result.stderr)
    return out


def test_a_feature_model_exports_embeddings_with_a_static_dim(features):
    import onnx

    manifest = json.loads((features / "manifest.json").read_text())
    assert manifest["source"]["architecture"]["summary"].endswith("no classifier (outputs embeddings)")
    for v in manifest["variants"]:
        assert v["onnx"]["outputs"] == [{"name": "embeddings", "dtype": "float32", "shape": ["batch", WIDTH]}]
        declared = onnx.load(str(features / v["onnx"]["path"])).graph.output[0]
        assert declared.name == "embeddings"
        assert [d.dim_param or d.dim_value for d in declared.type.tensor_type.shape.dim] == ["batch", WIDTH]
        assert v["trt_lint"]["passed"], v["trt_lint"]["issues"]  # the embedding dim was named, not static
        assert v["parity"]["top1_agreement"] is None and v["parity"]["top5_agreement"] is None
        assert v["parity"]["passed"] and v["parity"]["min_cosine"] > 0.99999


def test_a_feature_models_table_and_report_have_no_top_k(features):
    build = (features.parent / "build.txt").read_text()
    report = (features / "report.md").read_text()
    inspect = run_cli("inspect", str(features), "--wide")
    assert inspect.exit_code == 0, inspect.output + inspect.stderr
    for text in (build, report, inspect.stdout):
        assert "top-1" not in text and "top-5" not in text, text
        assert "cosine" in text and "max" in text and "native" in text
    assert "cosine and |Δ| only" in report
    assert "TensorRT lint" not in build + inspect.stdout


def test_a_feature_models_native_agreement_is_cosine_only(features, photos):
    manifest = json.loads((features / "manifest.json").read_text())
    agreement = {v["label"]: v["native_agreement"] for v in manifest["variants"]}
    native, p8 = agreement["p16"], agreement["p8"]  # vit_base_patch16: kernel 16 at its native 32
    assert native["native"] and native["min_cosine"] == native["mean_cosine"] == 1.0
    assert p8["against"] == "p16 at 32" and p8["images"] == 4 and p8["from"] == f"images from {photos}"
    assert p8["top1_agreement"] is None and not p8["native"]
    assert -1.0 <= p8["min_cosine"] <= p8["mean_cosine"] < 1.0
    report = (features / "report.md").read_text()
    assert f"{p8['mean_cosine']:.4f}" in report and "against p16 at 32" in report


def test_predict_prints_the_embedding_and_json_returns_it(features, photos):
    from exporter.runtime import Bundle

    image = photos / "chelsea.png"
    result = run_cli("predict", str(features), str(image), "--variant", "p16")
    assert result.exit_code == 0, result.output + result.stderr
    expected = Bundle.open(features).model(variant="p16")([str(image)])[0]
    norm = float(np.linalg.norm(expected))
    assert f"{image}: embedding {WIDTH}-d, norm {norm:.4g}, [{expected[0]:.4f}, " in result.stdout
    result = run_cli("predict", str(features), str(image), "--variant", "p16", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    data = json.loads(result.stdout)
    assert data["output"] == "embeddings" and "top" not in data["results"][0]
    np.testing.assert_allclose(data["results"][0]["embedding"], expected, rtol=1e-6, atol=1e-7)


def test_the_runtime_returns_embeddings_and_has_no_classes(features, photos):
    from exporter.core.errors import UsageError
    from exporter.runtime import Bundle

    bundle = Bundle.open(features)
    assert not bundle.classifier and bundle.output_name == "embeddings" and bundle.labels == []
    model = bundle.model(variant="p8")
    assert model([str(photos / "coffee.png"), str(photos / "rocket.png")]).shape == (2, WIDTH)
    with pytest.raises(UsageError, match="feature model"):
        model.predict([str(photos / "coffee.png")])


def test_evaluate_says_it_needs_a_classifier(features, photos):
    result = run_cli("evaluate", str(features), "--data", str(photos))
    line = refused(result, "evaluate needs a classifier", "feature model", "'embeddings'")
    assert not (features / "eval.json").exists(), line


def test_validate_judges_a_feature_model_without_top_k(features):
    result = run_cli("validate", str(features))
    assert result.exit_code == 0, result.output + result.stderr
    assert "all 2 variants passed" in result.stdout and "top-1" not in result.stdout


@pytest.mark.parametrize("backend", ["onnx", "python"])
def test_triton_configs_name_the_embeddings(features, tmp_path, backend):
    from exporter.deploy.repository import check_config, triton_schema

    schema = triton_schema()
    if schema is None:
        pytest.skip("tritonclient is in the dev extra")
    repo = tmp_path / "repo"
    result = run_cli("triton", str(features), "--out", str(repo), "--backend", backend)
    assert result.exit_code == 0, result.output + result.stderr
    models = ["headless_p8", "headless_p16"] + (["flexivit"] if backend == "python" else [])
    for name in models:
        config = check_config((repo / name / "config.pbtxt").read_text(), schema)
        assert config.output[0].name == "embeddings" and list(config.output[0].dims) == [WIDTH]


def test_a_feature_model_without_real_images_skips_native_agreement_naming_calib_dir(headless_weights, tmp_path):
    out = tmp_path / "b"
    args = ("-p", "16", "--weights", str(headless_weights), "--num-heads", "2", "--parity-samples", "2")
    result = run_cli("build", *args, "--out", str(out), "--wide")
    assert result.exit_code == 0, result.output + result.stderr
    (record,) = json.loads((out / "manifest.json").read_text())["variants"]
    assert "--calib-dir DIR" in record["native_agreement"]["skipped"]
    assert "skipped" in result.stdout and "--calib-dir DIR" in (out / "report.md").read_text()
    assert "--calib-dir DIR" in result.stdout  # the build itself says why, under its table


def old_feature_bundle(features: Path, tmp_path: Path) -> Path:
    """``features`` as flexiexport wrote it before feature models were named: its ONNX output and
    manifest say ``logits``, its parity records top-1/top-5 and it has no ``native_agreement``."""
    import onnx

    from exporter.core.files import sha256_file

    old = tmp_path / "old"
    shutil.copytree(features, old)

    def rename(data: dict) -> None:
        for v in data["variants"]:
            path = old / v["onnx"]["path"]
            model = onnx.load(str(path))
            for node in model.graph.node:
                node.output[:] = ["logits" if o == "embeddings" else o for o in node.output]
            model.graph.output[0].name = "logits"
            onnx.save(model, str(path))
            v["onnx"]["outputs"][0]["name"] = "logits"
            v["onnx"]["sha256"] = sha256_file(path)
            v["parity"] |= {"top1_agreement": 1.0, "top5_agreement": 1.0}
            del v["native_agreement"]

    edit_manifest(old, rename)
    return old


def test_a_feature_bundle_written_before_still_opens_and_runs(features, photos, tmp_path):
    old = old_feature_bundle(features, tmp_path)
    result = run_cli("inspect", str(old))
    assert result.exit_code == 0, result.output + result.stderr
    assert "top-1" not in result.stdout  # num_classes 0 says it is a feature model
    result = run_cli("validate", str(old))
    assert result.exit_code == 0, result.output + result.stderr
    result = run_cli("predict", str(old), str(photos / "astronaut.png"), "--variant", "p16", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    assert json.loads(result.stdout)["output"] == "logits"
    assert len(json.loads(result.stdout)["results"][0]["embedding"]) == WIDTH
    assert "needs a classifier" in one_line_error(run_cli("evaluate", str(old), "--data", str(photos)))


def test_a_feature_models_plot_gets_a_native_panel(features, tmp_path):
    from PIL import Image

    copy = tmp_path / "b"
    shutil.copytree(features, copy)
    result = run_cli("bench", str(copy), "--backends", "ort-cpu", "--batch-sizes", "1", *QUICK_BENCH)
    assert result.exit_code == 0, result.output + result.stderr
    with Image.open(copy / "tradeoff.png") as image:
        assert image.width == 2 * 6 * 110  # latency and agreement with the native patch, 6 inches each at 110 dpi


def test_a_feature_model_serves_its_embeddings_on_triton(features, photos, tmp_path):
    """The python-backend repository on a real tritonserver: the entry model and a variant answer
    with ``embeddings``, as the runtime does."""
    from PIL import Image

    from exporter.runtime import Bundle
    from tests.deploy.test_triton_serve import NO_CLIENT, ask, start_server

    if NO_CLIENT:
        pytest.skip(NO_CLIENT)
    import tritonclient.http as http

    image = np.asarray(Image.open(photos / "chelsea.png").convert("RGB"))[None]
    expected = Bundle.open(features).model(variant="p16", backend="ort-cpu")(image)
    server = start_server(features, tmp_path)
    try:
        client = http.InferenceServerClient(server.http_url[7:])
        try:
            answer = ask(client, "flexivit", {"images": image}, parameters={"variant": "p16"})
            np.testing.assert_allclose(answer.as_numpy("embeddings"), expected, rtol=1e-5, atol=1e-5)
            assert answer.as_numpy("variant")[0, 0] == b"p16"
            pixels = Bundle.open(features).preprocess("p16")(image)
            direct = ask(client, "headless_p16", {"pixel_values": pixels})
            np.testing.assert_allclose(direct.as_numpy("embeddings"), expected, rtol=1e-5, atol=1e-5)
        finally:
            client.close()
    finally:
        assert server.stop() == 0
