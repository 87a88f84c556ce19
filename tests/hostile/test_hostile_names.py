"""Names are data, never code or paths (issue #11): hostile names from a checkpoint config, a
profile file, a manifest or a folder stay inside ``bundles/``, never run in a generated script,
never break a Triton config and never reach the terminal as markup or escape codes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from exporter.bundle.door import read_manifest
from exporter.core.errors import BundleError
from exporter.core.names import is_safe_name, slug
from exporter.deploy.repository import config_text, model_name
from exporter.tensorrt.profile import load_profile, profile_from_dict
from exporter.tensorrt.script import build_script
from exporter.tensorrt.stage import engine_plan

from conftest import TINY, build_demo, one_line_error, run_cli, save_with_config, tiny_model

ESC = "\x1b"
HOSTILE = '$(touch PWNED) `touch PWNED` it\'s "quoted"\ntouch PWNED'


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return build_demo(tmp_path_factory, "hostile")


def copy_of(demo: Path, where: Path) -> Path:
    shutil.copytree(demo, where)
    return where


def tamper(bundle: Path, change) -> None:
    data = json.loads((bundle / "manifest.json").read_text())
    change(data)
    (bundle / "manifest.json").write_text(json.dumps(data))


def pwned(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("PWNED")]


# 1. The bundle's name: from a config beside the weights, --model or the weights' stem.


@pytest.mark.parametrize(
    ("config_name", "stem", "expected"),
    [
        ("OUTSIDE", "w", None),  # an absolute path: tmp_path/outside/evil
        ("../../x", "w", "x"),
        (None, "w [x] $(id)", "w-x-id"),
    ],
)
def test_bundle_name_is_slugged_and_stays_inside_bundles(tmp_path, monkeypatch, caplog, config_name, stem, expected):
    work = tmp_path / "a" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    model = tiny_model(num_classes=3)
    weights = save_with_config(model, tmp_path / f"{stem}.pt", "flexivit_small", **TINY, num_classes=3)
    if config_name is not None:
        config = json.loads(weights.with_suffix(".json").read_text())
        config["name"] = str(tmp_path / "outside" / "evil") if config_name == "OUTSIDE" else config_name
        weights.with_suffix(".json").write_text(json.dumps(config))
    expected = expected or slug(str(tmp_path / "outside" / "evil"))
    with caplog.at_level(logging.WARNING, logger="exporter.source.load"):
        result = run_cli("build", "--weights", str(weights), "-p", "16", "--parity-samples", "2", "-q")
    assert result.exit_code == 0, result.output + result.stderr
    assert sorted(p.name for p in (work / "bundles").iterdir()) == [expected]
    assert read_manifest(work / "bundles" / expected).name == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", f"{stem}.json", f"{stem}.pt"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["work"]
    assert [r for r in caplog.records if f"'{expected}'" in r.getMessage()], caplog.text


# 2. Profile names and the trtexec script.

FP32_PROFILE = 'description = "plain"\nprecision = "fp32"\n[batch]\nmin = 1\nopt = 1\nmax = 2\n'


def test_a_profile_file_with_a_command_in_its_name_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hostile = tmp_path / "x$(touch${IFS}PWNED).toml"
    hostile.write_text(FP32_PROFILE)
    result = run_cli("build", "-p", "16", "--profile", str(hostile), "--out", str(tmp_path / "B"), "-q")
    error = one_line_error(result)
    assert result.exit_code == 2 and "profile name 'x$(touch${IFS}PWNED)' is not a safe name" in error
    assert not (tmp_path / "B").exists() and not pwned(tmp_path)


def test_a_profile_name_that_is_a_path_is_refused(tmp_path):
    result = run_cli("build", "-p", "16", "--profile", "../../../etc/x", "--out", str(tmp_path / "B"), "-q")
    assert result.exit_code == 2 and "not a safe name" in one_line_error(result)
    assert not (tmp_path / "B").exists()


def fake_trtexec(tmp_path: Path, version: str) -> Path:
    """A stand-in trtexec that reports ``version`` and logs each argument on its own line."""
    fake = tmp_path / f"trtexec-{version}"
    fake.write_text(
        f'#!/usr/bin/env bash\nif [ "$1" = --help ]; then echo "[TensorRT v{version}]"; exit 0; fi\n'
        f'printf "%s\\n" "$@" >> "{tmp_path}/calls.log"\n'
        'for a in "$@"; do case "$a" in --saveEngine=*) echo engine > "${a#--saveEngine=}";; esac; done\n'
    )
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_the_trtexec_script_runs_no_string_it_was_given(demo, tmp_path, precision):
    bundle = copy_of(demo, tmp_path / "b")
    profile = profile_from_dict("safe-name", {"description": HOSTILE, "precision": precision})
    plan = engine_plan(bundle, read_manifest(bundle), profile)
    plan = [replace(v, label=v.label + "$(touch PWNED)", onnx=f"onnx/{HOSTILE}.onnx") for v in plan]
    script = bundle / "engines" / "build.sh"
    script.parent.mkdir()
    script.write_text(build_script(profile, plan))
    for version in ("100300", "101300"):  # weak typing runs trtexec; strong refuses fp16 from fp32 ONNX
        env = {**os.environ, "TRTEXEC": str(fake_trtexec(tmp_path, version))}
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == (4 if precision == "fp16" and version == "101300" else 0), done.stderr
        assert not pwned(tmp_path), script.read_text()
    calls = (tmp_path / "calls.log").read_text()
    assert f"--onnx=onnx/{HOSTILE}.onnx\n" in calls  # the argument reached trtexec as one literal word
    assert (bundle / "engines" / "safe-name").is_dir()


# 3. Triton configs.


def test_triton_model_names_are_safe():
    assert model_name("flexivit-demo", "p8") == "flexivit_demo_p8"
    for bundle_name in ('../"evil"\nname', "_-_", "x" * 300, "[/bold]"):
        name = model_name(bundle_name, "p10x15")
        assert is_safe_name(name) and name.endswith("p10x15"), name


def test_triton_config_escapes_quotes_and_refuses_control_characters(demo):
    from exporter.deploy.repository import check_config, triton_schema

    record = read_manifest(demo).variants[0]
    odd = 'in"put\\x'
    # names the door refuses (TensorName): the config writer escapes or refuses them all the same
    onnx = record.onnx.model_copy(update={"inputs": [record.onnx.inputs[0].model_copy(update={"name": odd})]})
    text = config_text("m", record.model_copy(update={"onnx": onnx}), "onnxruntime_onnx", 8)
    assert text.endswith("\n") and len(text.splitlines()) == text.count("\n")
    schema = triton_schema()
    if schema is not None:
        assert check_config(text, schema).input[0].name == odd
    for bad in ("in\nput", 'x" } ] output [ {', "a\x1b[2J"):
        outputs = [record.onnx.outputs[0].model_copy(update={"name": bad})]
        bad_record = record.model_copy(update={"onnx": record.onnx.model_copy(update={"outputs": outputs})})
        if "\n" in bad or ESC in bad:
            with pytest.raises(BundleError, match="output name"):
                config_text("m", bad_record, "onnxruntime_onnx", 8)
        else:
            text = config_text("m", bad_record, "onnxruntime_onnx", 8)
            assert schema is None or check_config(text, schema).output[0].name == bad


def test_triton_refuses_a_manifest_input_name_with_a_newline(demo, tmp_path):
    bundle = copy_of(demo, tmp_path / "b")
    tamper(bundle, lambda d: d["variants"][0]["onnx"]["inputs"][0].update(name='x"\ninstance_group [ ]'))
    result = run_cli("triton", str(bundle), "--out", str(tmp_path / "repo"))
    assert result.exit_code == 2, result.output + result.stderr
    assert ESC not in result.stderr and not (tmp_path / "repo").exists()


# 4. Terminal output.


def test_inspect_shows_markup_and_escape_codes_from_a_manifest_literally(demo, tmp_path):
    bundle = copy_of(demo, tmp_path / "b")

    def change(data):
        data["name"] = "[/bold]\x1b[2Jevil"
        data["variants"][0]["label"] = "[red]p8"
        data["source"]["architecture"]["summary"] = "[link=x]summary[/link] \x1b[31m[/]"
        data["source"]["path"] = "/weights/[bold]w.pt"
        data["versions"]["onnx"] = "[/red]1.0\x1b]8;;http://x\x07"
        data["variants"][1]["onnx"]["path"] = "onnx/[/]model_p16.onnx"

    tamper(bundle, change)
    result = run_cli("inspect", str(bundle))
    assert result.exit_code in (0, 2), result.output + result.stderr
    assert ESC not in result.stdout + result.stderr and "\x07" not in result.stdout + result.stderr
    if result.exit_code == 0:
        for literal in ("[link=x]summary[/link]", "/weights/[bold]w.pt", "[/red]1.0", "]model_p16.onnx"):
            assert literal in result.stdout, result.stdout
    else:
        one_line_error(result)


def test_inspect_shows_markup_in_summaries_and_versions_literally(demo, tmp_path):
    """The fields the manifest schema cannot restrict to safe names: free text, printed as is."""
    bundle = copy_of(demo, tmp_path / "b")

    def change(data):
        data["source"]["architecture"]["summary"] = "[link=x]summary[/link] [/] \x1b[2J"
        data["versions"]["torch"] = "[bold red]2.0[/]"

    tamper(bundle, change)
    result = run_cli("inspect", str(bundle))
    assert result.exit_code == 0, result.output + result.stderr
    assert "[link=x]summary[/link] [/]" in result.stdout and "torch [bold red]2.0[/]" in result.stdout
    assert ESC not in result.stdout + result.stderr


def test_errors_quoting_a_hostile_label_carry_no_escape_codes(demo, tmp_path):
    bundle = copy_of(demo, tmp_path / "b")
    tamper(bundle, lambda d: d["variants"][0].update(label="[red]\x1b[2Jp8"))
    result = run_cli("triton", str(bundle), "--out", str(tmp_path / "repo"), "--precision", "int8")
    assert result.exit_code == 2 and ESC not in result.stderr
    one_line_error(result)


def test_a_bundle_folder_with_markup_in_its_name_builds_and_prints_literally(tmp_path):
    out = tmp_path / "[/bold]b[red]"
    result = run_cli("build", "-p", "16", "--parity-samples", "2", "--out", str(out), "-q")
    assert result.exit_code == 0, result.output + result.stderr
    assert f"bundle written to {out}" in result.stdout.replace("\n", "")


def test_the_plot_draws_dollar_signs_as_written(tmp_path):
    from exporter.measure.plot import plot_tradeoff

    evaluation = {
        "results": [{"backend": "ort$", "patch_size": [8], "top1": 0.5}],
        "data": "/d/$\\frac{$",
        "samples": 1,
    }
    assert plot_tradeoff(None, evaluation, tmp_path / "p.png", "name $\\frac{ $").is_file()


def test_log_lines_carry_no_escape_codes():
    from exporter.cli.group import PrintableFormatter

    record = logging.LogRecord("exporter.source.load", logging.WARNING, __file__, 1, "name %r", ("\x1b[2Jx",), None)
    assert PrintableFormatter("%(message)s").format(record) == "name '\\x1b[2Jx'"
    record = logging.LogRecord("exporter.source.load", logging.WARNING, __file__, 1, "name %s", ("\x1b[2Jx",), None)
    assert PrintableFormatter("%(message)s").format(record) == "name [2Jx"


# 5. Names shown as commands or used as file names.


def test_the_pending_engine_command_quotes_the_bundle_path(demo, tmp_path):
    from exporter.tensorrt.stage import pending_engines

    entry = pending_engines(str(tmp_path / "my bundle$(id)"), load_profile("t4"), "no TensorRT")
    assert entry.to_dict()["command"] == f"flexiexport engine '{tmp_path}/my bundle$(id)' --profile t4"


def test_an_engine_plan_refuses_a_variant_label_that_is_a_path(demo):
    from exporter.core.errors import UsageError

    manifest = read_manifest(demo)
    bad = manifest.variants[0].model_copy(update={"label": "../../p8"})  # the door refuses it; so must the plan
    manifest = manifest.model_copy(update={"variants": (bad,)})
    with pytest.raises(UsageError, match="variant label '../../p8' is not a safe name"):
        engine_plan(demo, manifest, load_profile("t4"))
