"""Findings of a hostile review of the bundle trust boundary (branch ``attack``).

Each test states the promise it checks; every one of them fails on the reviewed code. They use a
demo bundle built once, tampered with per test, like ``test_hostile_bundle``.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from exporter.source.load import sha256_file

from conftest import HEADLINE, build_demo, copy_into, edit_manifest, refused, run_cli

QUICK_BENCH = ("--backends", "ort-cpu", "--batch-sizes", "1", "--runs", "1", "--min-seconds", "0", "--warmup", "0")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return build_demo(tmp_path_factory, "attack")


@pytest.fixture
def bundle(demo, tmp_path) -> Path:
    copy = tmp_path / "b"
    shutil.copytree(demo, copy)
    return copy


# --- data loss ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["old", "tmp"])
def test_a_user_folder_named_like_a_stale_temporary_is_not_deleted(demo, tmp_path, kind):
    """``remove_stale_temporaries`` deletes any ``.NAME.(tmp|old)-PID-*`` folder beside --out whose
    PID is not running, by its name alone: a user's folder with such a name, and its files, go."""
    mine = tmp_path / f".repo.{kind}-4000000-my-backup"
    mine.mkdir()
    (mine / "data.txt").write_text("precious")
    result = run_cli("triton", str(demo), "--out", str(tmp_path / "repo"))  # no --force
    assert result.exit_code == 0, result.stderr
    assert (mine / "data.txt").read_text() == "precious"


# --- reads outside the bundle -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cmd",
    [
        ("validate", "--rebuild", "-q"),
        ("bench", *QUICK_BENCH, "-q"),
        ("bench", *QUICK_BENCH, "--backends", "torch", "-q"),
        ("evaluate", "-q"),
    ],
)
def test_a_source_without_sha256_is_never_read(bundle, tmp_path, cmd):
    """``source.sha256: null`` skips the hash gate: the file the manifest names outside the bundle
    (and the ``<stem>.json`` config beside it) is read and loaded. bench and evaluate read it too,
    although the README says only ``validate --rebuild`` reads outside the bundle."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "notes.pt").write_text("not a checkpoint")
    (secret / "notes.json").write_text('{"architecture": 5}')  # a read of it shows in the error

    def change(m):
        m["source"].update(path=str(secret / "notes.pt"), sha256=None)

    edit_manifest(bundle, change)
    result = run_cli(cmd[0], str(bundle), *cmd[1:])
    if cmd[0] == "bench" and "torch" not in cmd:  # an onnxruntime-only bench never opens the checkpoint
        assert result.exit_code == 0, result.output + result.stderr
        return
    line = refused(result, "records no sha256", "--weights")
    assert "notes.json" not in line and "architecture" not in line, line


@pytest.mark.parametrize(
    "cmd",
    [("bench", *QUICK_BENCH, "--backends", "torch", "-q"), ("evaluate", "-q"), ("validate", "--rebuild", "-q")],
)
def test_a_bundle_never_makes_a_command_download_weights(bundle, cmd, monkeypatch):
    """``source.path: null`` with a model name makes bench/evaluate/validate --rebuild call
    ``timm.create_model(name, pretrained=True)``: a hub download chosen by the bundle."""
    import exporter.source.load as load

    def no_download(name):
        raise AssertionError(f"a bundle made flexiexport download {name!r}")

    monkeypatch.setattr(load, "_download_pretrained", no_download)
    edit_manifest(
        bundle,
        lambda m: (
            m["source"].update(path=None, sha256=None),
            m["source"]["architecture"].update(model_name="vit_base_patch16_224"),
        ),
    )
    refused(run_cli(cmd[0], str(bundle), *cmd[1:]), "names no checkpoint file", "--weights")


def test_rebuild_never_walks_a_calib_dir_it_was_not_given(bundle, monkeypatch):
    """``options.calib_dir`` is a path from the manifest: ``validate --rebuild`` rglob-walks it and
    reads the first images to hash them (``/`` walks the whole file system, 37 s, then exit 1)."""
    import exporter.runtime.images as images

    walked = []
    real = images.list_images
    monkeypatch.setattr(images, "list_images", lambda folder: walked.append(folder) or real(folder))
    edit_manifest(bundle, lambda m: m["options"].update(calib_dir="/usr/share", calib_sha256="0" * 64))
    run_cli("validate", str(bundle), "--rebuild", "-q")
    assert Path("/usr/share") not in walked


# --- exit 1 (or a hang) on bad input ------------------------------------------------------------------


def _loose(m):
    m["variants"][0]["reduced"] = {"precision": "fp16"}


LOOSE_ENTRIES = {
    # ``ReducedEntry | dict[str, Any]`` and friends: an entry that fails the record is accepted as a dict.
    "reduced without path": (_loose, ["inspect", "validate", "triton"]),
    "reference.random a string": (lambda m: m["variants"][0]["reference"].update(random="x"), ["validate"]),
    "reference without real": (lambda m: m["variants"][0]["reference"].pop("real"), ["validate"]),
    "shared_weights path an int": (lambda m: m.update(shared_weights={"path": 5}), ["inspect"]),
    "shared_weights without path": (lambda m: m.update(shared_weights={"x": 1}), ["inspect"]),
    "reduced tolerance with an unknown key": (
        lambda m: m["variants"][0].update(
            reduced={
                "precision": "fp16",
                "path": m["variants"][0]["onnx"]["path"],
                "sha256": m["variants"][0]["onnx"]["sha256"],
                "bytes": 1,
                "status": "passed",
                "parity": {},
                "tolerance": {"name": "x", "evil": 1},
            }
        ),
        ["validate"],
    ),
    # dict[str, Any] fields the CLI formats or iterates
    "parity.max_abs a string": (lambda m: m["variants"][0]["parity"].update(max_abs="x"), ["inspect"]),
    "trt_lint.issues an int": (lambda m: m["variants"][0].update(trt_lint={"passed": False, "issues": 5}), ["inspect"]),
    "engine set without gpu": (
        lambda m: m["engines"].update(
            t4={"status": "x", "profile": {"name": "t4", "batch": {"min": 1, "opt": 1, "max": 8}}}
        ),
        ["inspect"],
    ),
    "pending engine set without reason": (
        lambda m: m["engines"].update(
            t4={"status": "x", "command": "c", "profile": {"name": "t4", "batch": {"min": 1, "opt": 1, "max": 8}}}
        ),
        ["inspect"],
    ),
    "input dims that are names": (
        lambda m: m["variants"][0]["onnx"]["inputs"][0].update(shape=["batch", "C", 64, 64]),
        ["triton"],
    ),
}


@pytest.mark.parametrize("case", list(LOOSE_ENTRIES))
def test_a_malformed_manifest_entry_is_exit_2_not_an_internal_error(bundle, case):
    change, commands = LOOSE_ENTRIES[case]
    edit_manifest(bundle, change)
    for name in commands:
        extra = {"validate": ["-q"], "triton": ["--out", str(bundle.parent / "repo")]}.get(name, [])
        refused(run_cli(name, str(bundle), *extra))


def _npy_header(shape, descr="<f4") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def test_a_reference_whose_header_claims_terabytes_is_refused(bundle):
    """The npz member's header says (3e11, 10) float32; ``np.load`` allocates it: MemoryError, exit 1."""
    ref = bundle / "reference" / "model_p8.npz"
    with np.load(ref) as z:
        pixels = z["pixels"]
    px = io.BytesIO()
    np.save(px, pixels)
    archive = io.BytesIO()
    n = 3 * 10**11
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("logits.npy", _npy_header((n, 10)))
        zf.writestr("pixels.npy", px.getvalue())
    ref.write_bytes(archive.getvalue())

    def change(m):
        m["variants"][0]["reference"]["sha256"] = sha256_file(ref)

    edit_manifest(bundle, change)
    result = run_cli("validate", str(bundle), "-q")  # the header is read first: no allocation
    assert result.exit_code == 3 and "logits.npy holds <f4 [300000000000, 10]" in " ".join(result.stdout.split())


def test_a_reference_random_count_beyond_the_memory_estimate_is_refused(bundle):
    """The estimate uses options.parity_samples; ``reference.random.count`` (1e6 images of 64x64,
    46 GiB) is regenerated with numpy unchecked: MemoryError, exit 1."""
    ref = bundle / "reference" / "model_p8.npz"
    with np.load(ref) as z:
        pixels, logits = z["pixels"], z["logits"]
    n = 10**6
    buffer = io.BytesIO()
    np.savez(buffer, logits=np.zeros((n + len(pixels), logits.shape[1]), np.float32), pixels=pixels)
    ref.write_bytes(buffer.getvalue())

    def change(m):
        m["variants"][0]["reference"]["sha256"] = sha256_file(ref)
        m["variants"][0]["reference"]["random"]["count"] = n

    edit_manifest(bundle, change)
    refused(run_cli("validate", str(bundle), "-q"))


@pytest.mark.parametrize(
    "text",
    ['{"timings": []}', '{"x": 1}', '"abc"', "[" * 100_000 + "]" * 100_000],
    ids=["no timings", "no keys", "a string", "deeply nested"],
)
def test_a_malformed_artefact_read_back_for_the_plot_is_not_an_internal_error(bundle, text):
    """bench writes bench.json, then reads eval.json back to redraw tradeoff.png (evaluate reads
    bench.json the same way); ``read_artefact`` catches only ValueError and the plot trusts the keys.
    The new bench.json is already written when the command dies with exit 1."""
    (bundle / "eval.json").write_text(text)
    result = run_cli("bench", str(bundle), *QUICK_BENCH, "-q")
    assert result.exit_code in (0, 2), result.stderr
    assert "internal error" not in result.stderr


def test_a_deep_folder_inside_a_bundle_is_not_an_internal_error(bundle):
    """``Bundle.open`` walks the bundle with ``rglob`` (recursive): 1100 nested folders, RecursionError."""
    here = os.getcwd()
    os.chdir(bundle)
    try:
        for _ in range(1100):
            os.mkdir("d")
            os.chdir("d")
    finally:
        os.chdir(here)
    try:
        refused(run_cli("inspect", str(bundle)), "nested more than 32 folders deep")
    finally:  # pytest's own clean-up of old temporary folders recurses: leave nothing that deep
        subprocess.run(["rm", "-rf", str(bundle / "d")], check=True)


@pytest.mark.parametrize("cmd", ["inspect", "validate", "triton-out", "build-out"])
def test_a_too_long_path_is_exit_2(demo, tmp_path, cmd):
    """``Path.is_dir`` raises ENAMETOOLONG (it swallows only ENOENT/ENOTDIR/EBADF/ELOOP)."""
    long = str(tmp_path / ("a" * 300))
    args = {
        "inspect": ["inspect", long],
        "validate": ["validate", long],
        "triton-out": ["triton", str(demo), "--out", long],
        "build-out": [*HEADLINE, "--out", long, "-q"],
    }[cmd]
    refused(run_cli(*args))


def test_a_stale_temporary_with_a_huge_pid_is_not_an_internal_error(demo, tmp_path):
    (tmp_path / ".repo.tmp-99999999999999999999999-x").mkdir()
    result = run_cli("triton", str(demo), "--out", str(tmp_path / "repo"))
    assert "internal error" not in result.stderr, result.stderr


def test_out_spelled_with_dotdot_is_not_an_internal_error(demo, tmp_path):
    """``--out B/onnx/..``: ``out.name`` is '..', staging goes inside B/onnx and the rename is EBUSY."""
    out = tmp_path / "X"
    shutil.copytree(demo, out)
    result = run_cli("build", "--patch-sizes", "32", "--out", str(out / "onnx" / ".."), "--force", "-q")
    assert "internal error" not in result.stderr, result.stderr


def test_evaluate_never_hangs_on_a_fifo_named_like_an_image(demo, tmp_path):
    """``image_folder`` keeps every *.png under --data, a FIFO too; PIL then blocks reading it forever."""
    from PIL import Image

    data = tmp_path / "data"
    (data / "c0").mkdir(parents=True)
    (data / "c1").mkdir()
    Image.new("RGB", (64, 64)).save(data / "c1" / "ok.png")
    os.mkfifo(data / "c0" / "a.png")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    bundle = copy_into(demo, tmp_path)  # evaluate writes eval.json into the bundle
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "exporter.cli", "evaluate", str(bundle), "--data", str(data), "-q"],
            capture_output=True,
            text=True,
            timeout=90,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("evaluate hung on a FIFO named a.png")
    assert proc.returncode in (0, 2), proc.stderr


# --- profile files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        'precision = "fp32"\ntensorrt = 5\n',
        'precision = "fp32"\nx = ' + "[" * 5000 + "]" * 5000 + "\n",
        'precision = "fp32"\nworkspace_mib = inf\n',
        'precision = "fp32"\nworkspace_mib = nan\n',
        'precision = "fp32"\ntiming_cache = "nope"\n',
        'precision = "fp32"\n[batch]\nmin = 1\nopt = 1\nmax = 5000\n',
    ],
    ids=["tensorrt-int", "deep-array", "workspace-inf", "workspace-nan", "timing-cache-str", "batch-max-5000"],
)
def test_a_hostile_profile_file_is_one_error_line(tmp_path, body):
    """tensorrt=5: AttributeError, exit 1; deep array: RecursionError, exit 1; inf/nan workspace
    and a string timing_cache are accepted (``--memPoolSize=workspace:infM`` in the script,
    ``Infinity`` in manifest.json); batch.max 5000 builds a bundle its own reader refuses."""
    profile = tmp_path / "p.toml"
    profile.write_text(body)
    result = run_cli(
        "build",
        "--patch-sizes",
        "32",
        "--out",
        str(tmp_path / "b"),
        "--profile",
        str(profile),
        "--engines",
        "skip",
        "-q",
    )
    refused(result, "p")
