"""The served ``flexivit`` entry model chooses the variant ``flexiexport predict`` chooses: the same
bundle, budget and measurements give the same choice (the repository's bundle copy holds eval.json).

The entry model's own class runs here over a ``--backend python`` repository's copy, with the
config Triton would hand it (config.pbtxt parsed by Triton's schema, as JSON); the real server on
such a repository is tests/deploy/test_triton_serve.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.bundle.door import Bundle as Door
from exporter.core.machine import machine_key
from exporter.deploy.repository import ENTRY_MODEL, check_config, triton_schema, write_repository
from exporter.deploy.triton_models import EntryModel, _parameters
from exporter.runtime import Bundle

from conftest import build_demo, copy_into, run_cli

SCHEMA = triton_schema()
pytestmark = pytest.mark.skipif(SCHEMA is None, reason="tritonclient is in the dev extra")

# Accuracy ranks p32 first and tokens rank p8 first: a copy without eval.json chooses otherwise.
TOP1 = {"p8": 0.95, "p16": 0.97, "p32": 0.99}
P99 = {"p8": 5.0, "p16": 2.0, "p32": 1.0}  # ms at batch 1, for this machine: no probe, no timing


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """The demo with an eval.json and this machine's bench.json rows."""
    copy = copy_into(build_demo(tmp_path_factory), tmp_path_factory.mktemp("entry"))
    rows = [{"backend": "onnxruntime", "variant": k, "top1": v, "top5": 1.0} for k, v in TOP1.items()]
    (copy / "eval.json").write_text(json.dumps({"data": "test", "samples": 100, "results": rows}))
    timings = [{"backend": "ort-cpu", "variant": k, "batch": 1, "p50_ms": v / 2, "p99_ms": v} for k, v in P99.items()]
    (copy / "bench.json").write_text(json.dumps({"machine": {"cpu": machine_key()["cpu"]}, "timings": timings}))
    return copy


def served_entry(repo: Path) -> EntryModel:
    """The entry model set up as ``initialize`` sets it up, on the repository's bundle copy."""
    from google.protobuf.json_format import MessageToDict

    config = MessageToDict(
        check_config((repo / ENTRY_MODEL / "config.pbtxt").read_text(), SCHEMA), preserving_proto_field_name=True
    )
    entry = EntryModel()
    entry.setup(Bundle.open(repo / ENTRY_MODEL / "1" / "bundle"), config, _parameters(config))
    return entry


def test_the_served_entry_chooses_as_predict_does(bundle, tmp_path):
    repo = tmp_path / "repo"
    write_repository(Door.open(bundle), repo, "python", 8, "fp32", "ort-cpu", True)
    assert (repo / ENTRY_MODEL / "1" / "bundle" / "eval.json").read_bytes() == (bundle / "eval.json").read_bytes()
    entry = served_entry(repo)
    local = Bundle.open(bundle)
    for budget in (None, 100.0, 6.0, 3.0, 1.5, 1.0):
        predicted = local.model(budget_ms=budget, backend="ort-cpu").variant
        served = entry.choose({} if budget is None else {"budget_ms": budget}, 1)
        assert served == predicted, (budget, served, predicted)
    # Ranked by accuracy, not tokens: p32 fits every budget here and is the most accurate.
    assert entry.choose({}, 1) == entry.choose({"budget_ms": 3.0}, 1) == "p32"
    assert entry.choose({"variant": "16"}, 1) == "p16"  # a patch size names its variant, as in predict
    # And the CLI on the bundle itself says the same.
    digit = Path(__file__).resolve().parents[2] / "docs" / "digit.png"
    result = run_cli("predict", str(bundle), str(digit), "--budget-ms", "3", "--backend", "ort-cpu")
    assert result.exit_code == 0 and result.stdout.startswith("p32 on ort-cpu"), result.output + result.stderr
