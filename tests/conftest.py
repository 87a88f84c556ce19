"""Shared fixtures: tiny real timm ViTs saved to real checkpoint files, and a CLI runner."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result


def pytest_configure(config: pytest.Config) -> None:
    """Under ``pytest -n N`` (pyproject's default) each worker takes its share of the cores for
    torch's own threads: N workers with every core each only oversubscribe the machine."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        from exporter.core.machine import available_cores

        torch.set_num_threads(max(1, available_cores() // int(workers)))


TINY = dict(embed_dim=32, depth=2, num_heads=2)
# bench options for a functional run, not a measurement: two timed runs after one warm-up.
QUICK_BENCH = ("--runs", "2", "--min-seconds", "0", "--warmup", "1", "--quiet")


def tiny_model(name: str = "flexivit_small", **overrides):
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **{**TINY, **overrides}).eval()


def save_with_config(model: torch.nn.Module, path: Path, architecture: str | None = None, **model_args) -> Path:
    """Save ``model``'s state dict to ``path`` with a timm-style ``<stem>.json`` beside it."""
    torch.save(model.state_dict(), path)
    if architecture:
        path.with_suffix(".json").write_text(json.dumps({"architecture": architecture, "model_args": model_args}))
    return path


@pytest.fixture(scope="session")
def tiny_flexivit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny flexivit_small (width 32, 2 blocks, 10 classes) at 240x240 with its config."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny_flexivit.pt"
    return save_with_config(tiny_model(num_classes=10), path, "flexivit_small", **TINY, num_classes=10)


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny vit_base_patch16_224 (class token, pos slot for it), weights only: no config."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny_vit.pt"
    torch.save(tiny_model("vit_base_patch16_224", num_classes=7, embed_dim=64, num_heads=1).state_dict(), path)
    return path


def random_photos(folder: Path, count: int) -> Path:
    """``count`` seeded random 250x260 RGB PNGs in ``folder`` (calibration and check images)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (250, 260, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def run_cli(*args: str) -> Result:
    """Invoke the CLI in-process, with stdout and stderr kept apart."""
    from exporter.cli.group import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_line_error(result: Result) -> str:
    """The error text; asserts it is one ``error:`` line with no traceback."""
    err = result.stderr.strip()
    assert "Traceback" not in result.output + result.stderr
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def markdown_tables(text: str) -> list[list[int]]:
    """Each table that ``text`` renders to (CommonMark + GFM tables, as GitHub shows it), as the
    number of cells in each row, header first. A source row whose unescaped ``|`` make more cells
    than its header is an error here (the renderer silently drops the extra cells)."""
    import re

    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark").enable("table")
    tokens = md.parse(text)
    lines = text.splitlines()
    tables: list[list[int]] = []
    for token in tokens:
        if token.type == "table_open":
            tables.append([])
            start, end = token.map or (0, 0)
            cells = [len(re.split(r"(?<!\\)\|", line.strip().strip("|"))) for line in lines[start:end]]
            assert len(set(cells)) == 1, (cells, lines[start:end])
        elif token.type == "tr_open":
            tables[-1].append(0)
        elif token.type in ("th_open", "td_open"):
            tables[-1][-1] += 1
    return tables


HEADLINE = ("build", "--patch-sizes", "8", "16", "32")
# The Jetson Orin Nano demo bundle, fp32 only, with its engine plan pending (tests of engines).
ORIN_FP32 = ("build", "-p", "8", "16", "--profile", "jetson-orin-nano", "--precision", "fp32", "--quiet")
# The demo with fp16 files (for the L4's engines) and with int8 files.
FP16_L4 = ("build", "-p", "8", "16", "32", "--quiet", "--precision", "fp16", "--profile", "l4")
INT8 = ("build", "-p", "8", "16", "32", "--quiet", "--precision", "int8")
# The demo at two patch sizes (the hostile tests' small bundle), and a dynamic-resolution demo.
TWO_VARIANTS = ("build", "--patch-sizes", "16", "32", "--quiet")
DYNAMIC = ("build", "-p", "16", "32", "--img-size", "dynamic:32-128", "--parity-samples", "4", "-q")
GRID = ("build", "-p", "16", "32", "--img-size", "48", "64", "--parity-samples", "4", "-q")


@dataclass(frozen=True)
class Ran:
    """What a CLI run printed and returned (click's Result as a record the workers can share)."""

    exit_code: int
    stdout: str
    stderr: str
    output: str


@dataclass(frozen=True)
class Built:
    """A bundle built once per test session, the build's CLI result, and the digest of its files."""

    path: Path
    result: Ran
    digest: str


# Each kind of bundle is built once per session (a build is most of the suite's time), keyed on
# its build arguments and folder name; the module-scoped fixtures hand out these originals.
_BUILT: dict[tuple[str, ...], Built] = {}
# The keys the running module asked for: the ones its end checks.
_TOUCHED: set[tuple[str, ...]] = set()


def tree_digest(root: Path) -> str:
    """sha256 over every entry's relative path, kind and content under ``root`` (links not followed)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
        digest.update(f"{path.relative_to(root)}\0{kind}\0".encode())
        if kind == "file":
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        elif kind == "link":
            digest.update(str(path.readlink()).encode())
    return digest.hexdigest()


def built(
    tmp_path_factory: pytest.TempPathFactory, *args: str, name: str = "demo", codes: tuple[int, ...] = (0,)
) -> Built:
    """``flexiexport ARGS --out <tmp>/NAME``, built the first time a session asks for it and shared
    after that. Never change the returned bundle: copy it into ``tmp_path`` first (shutil.copytree).
    The end of each module checks that the bundles it asked for are unchanged."""
    key = (name, *args)
    if key not in _BUILT:
        with shared_record(tmp_path_factory, key) as record:
            if record.is_file():  # another worker of this run built it
                data = json.loads(record.read_text())
                _BUILT[key] = Built(Path(data["path"]), Ran(**data["result"]), data["digest"])
                changed = tree_digest(_BUILT[key].path) != _BUILT[key].digest
                assert not changed, f"the shared bundle built by {key} was changed (by a module on another worker)"
            else:
                out = tmp_path_factory.mktemp("built") / name
                result = run_cli(*args, "--out", str(out))
                ran = Ran(result.exit_code, result.stdout, result.stderr, result.output)
                _BUILT[key] = Built(out, ran, tree_digest(out))
                write_record(record, {"path": str(out), "result": asdict(ran), "digest": _BUILT[key].digest})
    ran = _BUILT[key].result
    assert ran.exit_code in codes, f"exit {ran.exit_code}: " + ran.output + ran.stderr
    _TOUCHED.add(key)
    return _BUILT[key]


@contextmanager
def shared_record(tmp_path_factory: pytest.TempPathFactory, key: tuple[str, ...]) -> Iterator[Path]:
    """The file recording what was made for ``key`` in this run (a bundle's build, a file's
    preflight), locked while the block runs: under ``pytest -n`` (pyproject's default) the workers
    of one run make each once between them (each worker's temporary folder is below the run's own)."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "built-bundles"
    shared.mkdir(exist_ok=True)
    tag = hashlib.sha256("\0".join(key).encode()).hexdigest()[:16]
    with open(shared / f"{tag}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield shared / f"{tag}.json"


def write_record(path: Path, data: object) -> None:
    """``data`` as JSON at ``path``, whole or not at all (renamed into place)."""
    part = path.with_suffix(".part")
    part.write_text(json.dumps(data))
    os.replace(part, path)


def copy_into(bundle: Path, folder: Path) -> Path:
    """A copy of ``bundle`` at ``folder/<its name>``, free to change."""
    return Path(shutil.copytree(bundle, folder / bundle.name))


@pytest.fixture(scope="module", autouse=True)
def _cached_bundles_unchanged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fails the module that changed a shared bundle (tests must change a copy), then drops it from
    the cache so that later modules get a fresh build."""
    _TOUCHED.clear()
    yield
    changed = [key for key in sorted(_TOUCHED) if tree_digest(_BUILT[key].path) != _BUILT[key].digest]
    for key in changed:
        del _BUILT[key]
        with shared_record(tmp_path_factory, key) as record:
            record.unlink(missing_ok=True)
    assert not changed, f"this module changed the shared bundle(s) built by {changed}: copy before changing"


# The TensorRT-RTX preflight (exporter.tensorrt.preflight) parses and builds every ONNX file of every
# build on the CPU: a third of a build's time here. Its record is a function of the file's bytes, its
# external data, the shapes and the target (engines are byte-identical across builds), and the
# session builds the same files again and again (the demo's p16 in a dozen bundles). So each distinct
# file is preflighted once per session (under ``pytest -n``, once for all the workers of the run), by
# the real library, and a build that writes the same bytes gets that record (read back from its
# JSON). Tests about the preflight itself take ``real_preflight`` and run it every time.
_PREFLIGHT_MEMO = {"on": True}


def file_key(path: Path) -> str | None:
    """sha256 over ``path`` and every other file beside it (external data is found there), None
    where ``path`` is no readable file (the real preflight says why)."""
    if not path.is_file():
        return None
    digest = hashlib.sha256(path.read_bytes())
    for other in sorted(path.parent.iterdir()):
        if other != path and other.is_file() and other.suffix != ".onnx":
            digest.update(f"{other.name}\0".encode() + hashlib.sha256(other.read_bytes()).digest())
    return digest.hexdigest()


@pytest.fixture(scope="session", autouse=True)
def _preflight_once_per_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    from exporter.tensorrt import preflight

    real = preflight.preflight_file

    def once(path: Path, shapes, compute_capability=None, library=preflight.TENSORRT_RTX) -> preflight.Preflight:
        key = file_key(path)
        if key is None or not _PREFLIGHT_MEMO["on"]:
            return real(path, shapes, compute_capability, library)
        known = repr((key, shapes, compute_capability, library.key))
        with shared_record(tmp_path_factory, ("preflight", known)) as record:  # once per run, all workers
            if not record.is_file():
                write_record(record, real(path, shapes, compute_capability, library).to_dict())
            return preflight.Preflight.model_validate_json(record.read_text())

    preflight.preflight_file = once  # what the pipeline's preflight_records looks up at each call
    yield
    preflight.preflight_file = real


@pytest.fixture
def real_preflight() -> Iterator[None]:
    """Every build in the test runs TensorRT-RTX's preflight on every file, none taken from earlier
    builds (the tests about the preflight)."""
    _PREFLIGHT_MEMO["on"] = False
    yield
    _PREFLIGHT_MEMO["on"] = True


@pytest.fixture
def quick_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget's latency probe at its floor, 50 timed runs per variant (not half a second each):
    for tests about the files it reads and writes, not about its numbers."""
    monkeypatch.setattr("exporter.runtime.budget.PROBE_SECONDS", 0.0)


def build_demo(tmp_path_factory: pytest.TempPathFactory, folder: str = "bundles") -> Path:
    """The demo bundle (the headline build), shared by the whole session: copy it before changing it.
    ``folder`` is kept for callers; the one cached bundle serves them all."""
    return built(tmp_path_factory, *HEADLINE, "--quiet").path


def edit_manifest(bundle: Path, change) -> dict:
    """Apply ``change`` to the bundle's manifest.json (in place, or by returning a new dict)."""
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    changed = change(data)
    data = changed if isinstance(changed, dict) else data
    path.write_text(json.dumps(data))
    return data


def refused(result: Result, *words: str) -> str:
    """Asserts exit 2 with one ``error:`` line holding every one of ``words``; returns the line."""
    assert result.exit_code == 2, f"exit {result.exit_code}: " + result.output + result.stderr
    line = one_line_error(result)
    for word in words:
        assert word in line, line
    return line
