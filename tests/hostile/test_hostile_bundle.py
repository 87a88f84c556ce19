"""The bundle is a trust boundary: hostile manifests, folders that are not ours, interrupts.

Every case runs the real command on a real demo bundle (built once here) that a test then
tampers with, and checks three things: exit 2 with one ``error:`` line (no traceback), nothing
outside the bundle read, written or deleted, and no half-written output left behind.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.bundle.door import Bundle
from exporter.bundle.write import remove_stale_temporaries, swap_into_place
from exporter.core.errors import Interrupted
from exporter.source.load import sha256_file

from conftest import HEADLINE, build_demo, edit_manifest, refused, run_cli

QUICK_BENCH = ("--backends", "ort-cpu", "--batch-sizes", "1", "--runs", "1", "--min-seconds", "0", "--warmup", "0")


def tree(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (links as their target text) with its sha256."""
    found = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            found[str(p.relative_to(folder))] = "link:" + os.readlink(p)
        elif p.is_file():
            found[str(p.relative_to(folder))] = sha256_file(p)
    return found


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return build_demo(tmp_path_factory, "hostile")


@pytest.fixture
def bundle(demo, tmp_path) -> Path:
    """A private copy of the demo bundle, inside its own folder ``tmp_path/b``."""
    copy = tmp_path / "b"
    shutil.copytree(demo, copy)
    return copy


# --- manifest paths are data ----------------------------------------------------------------------

BUNDLE_COMMANDS = {
    "validate": ("validate", "{b}", "-q"),
    "bench": ("bench", "{b}", *QUICK_BENCH, "-q"),
    "evaluate": ("evaluate", "{b}", "--limit", "8", "-q"),
    "triton": ("triton", "{b}", "--out", "{tmp}/repo"),
    "engine": ("engine", "{b}", "--profile", "t4"),
    "inspect": ("inspect", "{b}"),
}


def command(name: str, bundle: Path) -> list[str]:
    return [a.format(b=bundle, tmp=bundle.parent) for a in BUNDLE_COMMANDS[name]]


@pytest.mark.parametrize("name", list(BUNDLE_COMMANDS))
@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.onnx", "onnx/../../outside.onnx", "onnx//model.onnx"])
def test_a_manifest_path_leaving_the_bundle_is_refused_by_every_command(bundle, name, path):
    outside = bundle.parent / "outside.onnx"
    shutil.copy(bundle / "onnx" / "model_p8.onnx", outside)
    edit_manifest(bundle, lambda m: m["variants"][0]["onnx"].update(path=path))
    before = tree(bundle.parent)
    line = refused(run_cli(*command(name, bundle)), "variants[0].onnx.path", "plain path inside the bundle")
    assert repr(path) in line
    assert tree(bundle.parent) == before and not (bundle.parent / "repo").exists()


@pytest.mark.parametrize("name", ["validate", "bench", "evaluate", "triton", "engine"])
def test_a_symlink_leaving_the_bundle_is_refused(bundle, name):
    """The in-bundle file is a link to an identical file outside: same sha256, still refused."""
    outside = bundle.parent / "outside.onnx"
    shutil.move(bundle / "onnx" / "model_p16.onnx", outside)
    (bundle / "onnx" / "model_p16.onnx").symlink_to(outside)
    refused(run_cli(*command(name, bundle)), "model_p16.onnx", "leads outside the bundle")
    assert not (bundle.parent / "repo").exists()


def test_a_linked_folder_leaving_the_bundle_is_refused(bundle):
    outside = bundle.parent / "elsewhere"
    shutil.move(bundle / "onnx", outside)
    (bundle / "onnx").symlink_to(outside)
    refused(run_cli("validate", str(bundle)), "leads outside the bundle")


@pytest.mark.parametrize("name", ["validate", "bench", "triton"])
def test_a_byte_flipped_onnx_is_never_used(bundle, name):
    with open(bundle / "onnx" / "model_p32.onnx", "r+b") as handle:
        handle.seek(2000)
        byte = handle.read(1)
        handle.seek(2000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    result = run_cli(*command(name, bundle))
    if name == "validate":  # validate reports every variant, then fails
        assert result.exit_code == 3 and "p32" in result.stdout and "changed since the build" in result.stdout
        assert re.search(r"│ ✓ │ p8 +│ ok +│", result.stdout), result.stdout
    else:
        refused(result, "model_p32.onnx", "changed since the build")
    assert not (bundle.parent / "repo").exists()


@pytest.mark.parametrize("name", ["bench", "triton", "evaluate"])
def test_a_missing_bundle_file_is_exit_2(bundle, name):
    (bundle / "onnx" / "model_p16.onnx").unlink()
    refused(run_cli(*command(name, bundle)), "model_p16.onnx is missing")


def test_validate_never_passes_with_the_bundle_file_gone(bundle):
    """The old bug: a manifest path pointing at a copy outside, the in-bundle ONNX deleted."""
    outside = bundle.parent / "copy.onnx"
    shutil.move(bundle / "onnx" / "model_p8.onnx", outside)
    edit_manifest(bundle, lambda m: m["variants"][0]["onnx"].update(path=str(outside)))
    result = run_cli("validate", str(bundle))
    refused(result)
    assert "passed" not in result.stdout


def test_the_source_checkpoint_is_hashed_before_it_is_loaded(bundle, tmp_path):
    decoy = tmp_path / "decoy.safetensors"
    decoy.write_bytes(b"not the checkpoint")
    edit_manifest(bundle, lambda m: m["source"].update(path=str(decoy)))
    refused(run_cli("validate", str(bundle), "--rebuild"), "decoy.safetensors has sha256", "built from")
    refused(run_cli("validate", str(bundle), "--rebuild", "--weights", str(decoy)), "decoy.safetensors has sha256")


MALFORMED = [
    ("[1, 2, 3]", "(top level)"),
    ('{"schema_version": 1, "variants": [1]}', "name"),
    ("not json at all", "not valid JSON"),
    ("schema_version: 1", "not valid JSON"),
]


@pytest.mark.parametrize("text,words", MALFORMED)
@pytest.mark.parametrize("name", ["inspect", "validate", "bench", "triton", "evaluate", "engine"])
def test_a_manifest_that_is_not_ours_is_one_line(bundle, text, words, name):
    (bundle / "manifest.json").write_text(text)
    refused(run_cli(*command(name, bundle)), words)


FIELD_EDITS = [
    (lambda m: m["variants"].__setitem__(0, 1), "variants[0]"),
    (lambda m: m.__setitem__("source", None), "source"),
    (lambda m: m["variants"][0].__setitem__("tokens", "many"), "variants[0].tokens"),
    (lambda m: m["variants"][0].__setitem__("img_size", [100000, 100000]), "variants[0].img_size"),
    (lambda m: m["variants"][0].__setitem__("patch_size", [-8, 8]), "variants[0].patch_size"),
    (lambda m: m["options"].__setitem__("parity_samples", 10**12), "options.parity_samples"),
    (lambda m: m["options"].__setitem__("seed", -1), "options.seed"),
    (lambda m: m["variants"][0]["onnx"].__setitem__("sha256", "abc"), "variants[0].onnx.sha256"),
    (lambda m: m["variants"][1].__setitem__("label", "../p16"), "variants[1].label"),
    (lambda m: m.__setitem__("name", "$(touch PWNED)"), "name"),
    (lambda m: m["variants"][0]["onnx"]["inputs"][0].__setitem__("name", 'x" }] evil'), "inputs[0].name"),
    (lambda m: m.__setitem__("schema_version", 99), "schema_version 99 is not supported"),
    (lambda m: m["variants"].append(dict(m["variants"][0])), "variant labels repeat"),
    (lambda m: m["variants"][0]["onnx"]["tolerance"].update(evil=1), "variants[0].onnx.tolerance.evil"),
    (lambda m: m["variants"][0]["onnx"].__delitem__("tolerance"), "variants[0].onnx.tolerance"),
    (lambda m: m.update(tolerance=m["variants"][0]["onnx"]["tolerance"]), "recorded both at the top level"),
]


@pytest.mark.parametrize("change,where", FIELD_EDITS, ids=[w for _, w in FIELD_EDITS])
def test_a_wrong_type_or_range_names_the_field(bundle, change, where):
    edit_manifest(bundle, change)
    refused(run_cli("inspect", str(bundle)), where)
    refused(run_cli("validate", str(bundle)), where)


def older_layout(m: dict, atol: float) -> None:
    """The manifest as flexiexport wrote it before each checked file carried its own tolerance:
    the fp32 one once at the top level."""
    for v in m["variants"]:
        m["tolerance"] = v["onnx"].pop("tolerance") | {"atol": atol, "rtol": 0.0}


def test_a_bundle_written_before_per_file_tolerances_is_read_and_judged_with_its_tolerance(bundle):
    edit_manifest(bundle, lambda m: older_layout(m, 1.0))
    assert run_cli("inspect", str(bundle)).exit_code == 0
    assert run_cli("validate", str(bundle), "-q").exit_code == 0
    assert Bundle.open(bundle).manifest.variants[2].onnx.tolerance.atol == 1.0
    edit_manifest(bundle, lambda m: m["tolerance"].update(atol=1e-12))
    result = run_cli("validate", str(bundle))
    assert result.exit_code == 3 and "exceeds atol 1e-12" in result.stdout


def test_every_file_the_manifest_names_is_resolved_and_hashed(demo):
    opened = Bundle.open(demo)
    names = [rel for rel, _ in opened.files()]
    assert names == [
        f"{kind}/model_p{p}.{ext}" for p in (8, 16, 32) for kind, ext in (("onnx", "onnx"), ("reference", "npz"))
    ]
    for rel, sha in opened.files():
        assert opened.file(rel, sha) == demo / rel
    assert opened.unexpected_files() == []


# --- --force replaces only what is ours -----------------------------------------------------------


def test_force_never_replaces_a_folder_that_is_not_a_bundle(tmp_path):
    app = tmp_path / "webapp"
    app.mkdir()
    (app / "manifest.json").write_text('{"name": "my-web-app", "icons": []}')
    (app / "index.html").write_text("<html></html>")
    before = tree(app)
    for flag in ("--force", "--resume"):
        refused(run_cli(*HEADLINE, "--out", str(app), flag, "-q"), "not a flexiexport bundle")
    assert tree(app) == before


def test_force_never_replaces_a_bundle_holding_files_of_the_user(bundle):
    (bundle / "notes.txt").write_text("my notes")
    (bundle / "onnx" / "my_model.onnx").write_text("mine")
    before = tree(bundle)
    refused(run_cli(*HEADLINE, "--out", str(bundle), "--force", "-q"), "notes.txt", "onnx/my_model.onnx")
    assert tree(bundle) == before


def test_force_replaces_our_own_bundle_with_its_artefacts(bundle):
    assert run_cli("bench", str(bundle), *QUICK_BENCH, "-q").exit_code == 0
    assert (bundle / "bench.json").is_file() and (bundle / "tradeoff.png").is_file()
    result = run_cli(*HEADLINE, "--out", str(bundle), "--force", "-q")
    assert result.exit_code == 0, result.output + result.stderr
    assert not (bundle / "bench.json").exists()
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["b"]


def test_out_never_holds_the_source_checkpoint(tiny_flexivit, tmp_path):
    wb = tmp_path / "wb"
    wb.mkdir()
    weights = wb / "ckpt.pt"
    shutil.copy(tiny_flexivit, weights)
    shutil.copy(tiny_flexivit.with_suffix(".json"), wb / "ckpt.json")
    for out in (wb, tmp_path):
        for flag in ((), ("--force",)):
            result = run_cli("build", "-p", "16", "--weights", str(weights), "--out", str(out), *flag, "-q")
            refused(result, "holds", "ckpt.pt")
    assert sha256_file(weights) == sha256_file(tiny_flexivit)


def test_out_never_holds_the_current_directory(demo, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    refused(run_cli(*HEADLINE, "--out", ".", "--force", "-q"), "current directory")
    refused(run_cli(*HEADLINE, "--out", str(tmp_path), "--force", "-q"), "current directory")


def test_triton_never_replaces_its_input_or_a_folder_above_it(bundle):
    before = tree(bundle.parent)
    refused(run_cli("triton", str(bundle), "--out", str(bundle), "--force"), "holds")
    refused(run_cli("triton", str(bundle), "--out", str(bundle.parent), "--force"), "holds")
    refused(run_cli("triton", str(bundle), "--out", str(bundle / "repo"), "--force"), "lies inside")
    assert tree(bundle.parent) == before


def test_triton_force_replaces_only_a_repository_it_wrote(bundle, tmp_path):
    repo = tmp_path / "repo"
    assert run_cli("triton", str(bundle), "--out", str(repo)).exit_code == 0
    assert (repo / "flexiexport-repository.json").is_file()
    assert run_cli("triton", str(bundle), "--out", str(repo), "--force").exit_code == 0
    (repo / "mine.txt").write_text("user file")
    refused(run_cli("triton", str(bundle), "--out", str(repo), "--force"), "mine.txt")
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("1,2")
    refused(run_cli("triton", str(bundle), "--out", str(other), "--force"), "not a model repository")
    assert (other / "data.csv").read_text() == "1,2" and (repo / "mine.txt").is_file()


def test_out_at_a_mount_point_is_refused_before_any_work(tmp_path, monkeypatch):
    mount = tmp_path / "volume"
    mount.mkdir()
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == mount or real_ismount(p))
    result = run_cli(*HEADLINE, "--out", str(mount))
    refused(result, "mount point", str(mount / "bundle"))
    assert "source: load" not in result.output + result.stderr  # refused before the checkpoint is loaded
    assert list(tmp_path.iterdir()) == [mount] and not list(mount.iterdir())


@pytest.mark.parametrize("artefact", ["bench.json", "tradeoff.png"])
def test_artefacts_are_never_written_through_a_link(bundle, tmp_path, artefact):
    target = tmp_path / "victim.txt"
    target.write_text("precious")
    (bundle / artefact).symlink_to(target)
    refused(run_cli("bench", str(bundle), *QUICK_BENCH, "-q"), artefact, "leads outside the bundle")
    assert target.read_text() == "precious"
    (bundle / artefact).unlink()
    (bundle / artefact).symlink_to(bundle / "report.md")  # inside, but still not ours to write through
    refused(run_cli("bench", str(bundle), *QUICK_BENCH, "-q"), artefact, "not a regular file")
    assert "Overall" in (bundle / "report.md").read_text()


# --- interrupts -----------------------------------------------------------------------------------


def test_an_interrupt_during_the_swap_finishes_it_and_says_so(tmp_path, monkeypatch):
    out, new = tmp_path / "b", tmp_path / ".b.tmp-1-x"
    out.mkdir()
    (out / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    real_rmtree = shutil.rmtree

    def interrupted_rmtree(path, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the old bundle is being removed
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", interrupted_rmtree)
    with pytest.raises(Interrupted, match="after the new bundle was complete; it is in place"):
        swap_into_place(new, out)
    assert [p.name for p in tmp_path.iterdir()] == ["b"] and (out / "new.txt").is_file()


def test_the_next_run_removes_temporaries_of_dead_runs_only(tmp_path):
    from exporter.bundle.write import TEMP_MARKER

    out = tmp_path / "b"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = dead.stdout.strip()
    stale = tmp_path / f".b.tmp-{pid}-abcd1234"
    old = tmp_path / f".b.old-{pid}-1764330000000"
    live = tmp_path / f".b.tmp-{os.getpid()}-efgh5678"
    other = tmp_path / ".c.tmp-1-xyzw9876"
    unmarked = tmp_path / f".b.old-{pid}-1764330000001"  # named like ours, but the user's
    for folder in (stale, old, live, other, unmarked):
        folder.mkdir()
        if folder is not unmarked:
            (folder / TEMP_MARKER).write_text(folder.name)
    (unmarked / "data.txt").write_text("precious")
    assert sorted(remove_stale_temporaries(out)) == sorted([stale, old])
    assert live.is_dir() and other.is_dir() and (unmarked / "data.txt").read_text() == "precious"


def test_a_link_the_manifest_does_not_name_is_refused_too(bundle, tmp_path):
    """An ONNX can name external data the manifest does not list; no link may lead outside."""
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    (bundle / "onnx" / "weights.bin").symlink_to(tmp_path / "secret.bin")
    refused(run_cli("inspect", str(bundle)), "onnx/weights.bin", "leads outside the bundle")
