"""Open a bundle on the device and run it: one callable per (variant, backend), the patch size
chosen by a latency budget.

    bundle = Bundle.open("bundles/flexivit-demo")          # verified: schema, paths, sha256
    model = bundle.model(budget_ms=20)                      # or variant="p16"; neither: the most accurate
    logits = model(["digit.png"])                           # paths, PIL images, uint8 or float arrays
    model.predict(["digit.png"], top_k=3)                   # class names from the manifest

Imports numpy, Pillow and the one backend it runs: no torch, timm or onnx.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporter.bundle.door import Bundle as _Door
from exporter.bundle.limits import check_bundle_memory
from exporter.bundle.records import VariantRecord
from exporter.core.errors import BundleError, EnvironmentMissing, Unavailable, UsageError, param, word_params
from exporter.core.names import printable
from exporter.core.precision import PRECISIONS
from exporter.core.sizes import to_size2
from exporter.parity.compare import run_batched
from exporter.parity.runner import Runner
from exporter.runtime.arguments import check_arguments
from exporter.runtime.backends.base import BACKENDS, backend_problem, load_runner
from exporter.runtime.budget import Latency, choose_variant, load_latencies, probe_latencies
from exporter.runtime.decode import read_image
from exporter.runtime.measurements import accuracies
from exporter.runtime.preprocess import Preprocess
from exporter.runtime.sharing import SharedTensors
from exporter.tensorrt.select import bundle_engines, tensorrt_runner

log = logging.getLogger("exporter.runtime")


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    probability: float


class Bundle:
    """A bundle opened for inference (through the bundle door: every file checked before use)."""

    def __init__(self, door: _Door, share_weights: bool = False) -> None:
        self.door = door
        self.manifest = door.manifest
        self.share_weights = share_weights
        self._shared: SharedTensors | None = None

    @classmethod
    def open(cls, path: str | Path, share_weights: bool = False) -> Bundle:
        """``share_weights``: on a ``--shared-weights`` bundle, every ort-cpu variant loaded from
        this object uses one copy of the shared tensors (less memory with several variants
        loaded, slower runs: MatMul prepacking is off; README, "Run a bundle")."""
        if not isinstance(path, (str, os.PathLike)):
            raise UsageError(f"a bundle is a folder path, got {type(path).__name__}")
        return cls(_Door.open(Path(path)), share_weights)

    def shares(self, backend: str) -> bool:
        """Whether runners on ``backend`` use one copy of the bundle's shared tensors."""
        return self.share_weights and bool(self.manifest.shared_weights) and backend == "ort-cpu"

    def shared_tensors(self) -> SharedTensors:
        """The bundle's shared file, read once per opened bundle."""
        if self._shared is None:
            entry = self.manifest.shared_weights
            assert entry is not None, "shares() is checked first"
            self._shared = SharedTensors(self.door.file(entry.path, entry.sha256), entry.sha256)
        return self._shared

    @property
    def variants(self) -> list[str]:
        """Labels, most tokens first (``ranked`` orders by measured accuracy)."""
        return [v.label for v in sorted(self.manifest.variants, key=lambda v: -v.tokens)]

    def ranked(self, backend: str, precision: str = "fp32", latencies: dict[str, Latency] | None = None) -> list[str]:
        """Labels, most accurate first: top-1 from ``eval.json`` on this backend where the bundle
        has one (variants it lacks go last), else most tokens; ties go to the faster (measured
        p99), then to more tokens. The first that fits a budget is thus on the frontier."""

        name = backend if precision == "fp32" else f"{backend} {precision}"
        top1 = accuracies(self.door.read_artefact("eval.json"), name)
        lat = latencies or {}
        by_label = {v.label: v for v in self.manifest.variants}
        p99 = {k: lat[k].p99_ms if k in lat else math.inf for k in by_label}
        if not top1:
            return sorted(by_label, key=lambda k: (-by_label[k].tokens, p99[k]))
        return sorted(by_label, key=lambda k: (-top1.get(k, -1.0), p99[k], -by_label[k].tokens))

    @property
    def classifier(self) -> bool:
        """False for a feature model: ``model(images)`` returns embeddings, and there are no classes."""
        return self.manifest.classifier

    @property
    def output_name(self) -> str:
        """The ONNX output's name, as the manifest records it (``logits``, or ``embeddings``)."""
        return str(self.manifest.variants[0].onnx.outputs[0].name)

    @property
    def labels(self) -> list[str]:
        if not self.classifier:
            return []  # an embedding's dims are not classes
        names = self.manifest.labels
        classes = int(self.manifest.variants[0].onnx.outputs[0].shape[-1])
        return list(names) if len(names) == classes else [str(i) for i in range(classes)]

    def record(self, label: str) -> VariantRecord:
        found = next((v for v in self.manifest.variants if v.label == label), None)
        if found is None:
            raise UsageError(f"no variant {printable(label)!r} in the bundle; it has {', '.join(self.variants)}")
        return found

    def variant_named(self, text: str) -> str:
        """The label ``text`` names: a label as the manifest has it (``p16``, ``p8_64``), or the
        patch size (and image size) of exactly one variant: ``16``, ``16x16``, ``p16x16``, ``8_64``.
        Anything but a string (``16`` as an int, a list) is no name: refused, naming the labels."""
        if not isinstance(text, str):
            raise UsageError(f"no variant {text!r} in the bundle: name one as text ({', '.join(self.variants)})")
        if any(v.label == text for v in self.manifest.variants):
            return text
        matches = [v.label for v in self.manifest.variants if _names(text, v)]
        if len(matches) > 1:
            raise UsageError(f"variant {printable(text)!r} could be {', '.join(matches)}: name one of them")
        return matches[0] if matches else self.record(text).label  # the latter raises, naming the labels

    def choose(
        self,
        backend: str,
        precision: str = "fp32",
        variant: str | None = None,
        budget_ms: float | None = None,
        latencies: dict[str, Latency] | None = None,
    ) -> str:
        """The variant that answers: ``variant`` (``variant_named``), else the most accurate whose
        p99 in ``latencies`` fits ``budget_ms``, else the most accurate (``ranked``'s first, by
        eval.json and tokens alone). ``predict``, ``model()`` and Triton's entry model all choose here."""
        if variant is not None and budget_ms is not None:
            raise UsageError("give either a variant or a latency budget, not both")
        if variant is not None:
            return self.variant_named(variant)
        if budget_ms is None:
            return self.ranked(backend, precision)[0]
        found = latencies or {}
        return choose_variant(self.ranked(backend, precision, found), found, budget_ms)

    def ranked_by(self, backend: str, precision: str = "fp32") -> str:
        """Why ``ranked``'s first is first here, in words: ``most accurate in eval.json``, or
        ``most tokens; no eval.json to rank by accuracy``."""

        name = backend if precision == "fp32" else f"{backend} {precision}"
        if accuracies(self.door.read_artefact("eval.json"), name):
            return "most accurate in eval.json"
        return "most tokens; no eval.json to rank by accuracy"

    def resolve_backend(self, backend: str, precision: str = "fp32") -> str:
        """``auto`` → the first backend in ``BACKENDS`` order that is present and has a file to run.
        A precision the bundle has no file of is ``UsageError`` (no backend could run it)."""
        if precision not in PRECISIONS:  # model() and load_all() both come through here
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        missing = self._file_problem("ort-cpu", precision)
        if missing and not (backend in ("auto", "tensorrt") and self._engines()):
            raise UsageError(missing)
        if backend != "auto":
            problem = backend_problem(backend)
            if problem:
                raise EnvironmentMissing(f"backend {backend}: {problem}")
            problem = self._file_problem(backend, precision)
            if problem:  # the runtime is here, the bundle lacks its file (an engine is per GPU: this machine's)
                raise (EnvironmentMissing if backend == "tensorrt" else UsageError)(f"backend {backend}: {problem}")
            return backend
        reasons: dict[str, str] = {}
        for name in BACKENDS:
            if name == "openvino-bf16":
                continue  # never chosen silently: it trades fp32 parity for speed
            problem = backend_problem(name) or self._file_problem(name, precision)
            if not problem:
                skipped = "; ".join(f"{k}: {word_params(v, str)}" for k, v in reasons.items())  # a log line: no marks
                log.info("backend auto: %s (skipped: %s)", name, skipped)
                return name
            reasons[name] = problem
        said = "no backend can run this bundle here: " + "; ".join(f"{k}: {v}" for k, v in reasons.items())
        # a runtime that is here but has no file of this bundle to run: the bundle's lack (exit 2), as in `triton`
        present = [name for name in reasons if name != "tensorrt" and not backend_problem(name)]
        raise UsageError(said) if present else EnvironmentMissing(said)

    def _file_problem(self, backend: str, precision: str) -> str | None:
        if backend == "tensorrt":
            return None if self._engines() else "the bundle has no built engine for this GPU"
        variants = self.manifest.variants
        if precision != "fp32" and not all(v.reduced and v.reduced.precision == precision for v in variants):
            has = sorted({"fp32", *(v.reduced.precision for v in variants if v.reduced)})
            return (
                f"build with {param('precision')} {precision}: "
                f"the bundle has no {precision} ONNX (it has {', '.join(has)})"
            )
        return None

    def _engines(self) -> bool:
        """Whether the bundle holds any engine (built, or written by ``build_<profile>.sh``)."""

        return any(bundle_engines(self.door, record) for record in self.manifest.variants)

    def runner(self, label: str, backend: str, precision: str = "fp32", threads: int | None = None) -> Runner:
        """The checked file of ``label`` loaded on ``backend``."""
        check_arguments(threads=threads)
        record = self.record(label)
        if backend == "tensorrt":  # the engine that fits this GPU and TensorRT best (by its sidecar)
            try:
                return tensorrt_runner(self.door, record)
            except Unavailable as exc:
                raise EnvironmentMissing(str(exc)) from exc
        if precision != "fp32" and (record.reduced is None or record.reduced.status != "passed"):
            raise BundleError(f"{label}'s {precision} ONNX is missing or failed its parity check")
        path = self.door.onnx(record, precision)
        initializers = self.shared_tensors().initializers(path) if self.shares(backend) else None
        runner = load_runner(path, backend, threads, initializers)
        self.door.check_unchanged()  # what was loaded is the checked file, not a newer bundle's
        check_file_shapes(record, runner)
        return runner

    def load_all(self, backend: str = "auto", precision: str = "fp32", threads: int | None = None) -> dict[str, Runner]:
        """Every variant loaded on ``backend``, most accurate first (sharing as ``runner`` does)."""
        name = self.resolve_backend(backend, precision)
        return {label: self.runner(label, name, precision, threads) for label in self.variants}

    def model(
        self,
        variant: str | None = None,
        budget_ms: float | None = None,
        backend: str = "auto",
        precision: str = "fp32",
        batch: int = 1,
        adaptive: bool = False,
        threads: int | None = None,
    ) -> Model:
        """A callable for one variant (a label, or as text a patch size one variant has: ``"16"``), or the
        most accurate one whose measured p99 at ``batch`` fits ``budget_ms`` on this device and
        backend, or with neither the most accurate (``choose``): by ``eval.json`` when the bundle
        has one, else most tokens (``adaptive``: re-picked per call from the latencies observed)."""
        if variant is not None and budget_ms is not None:
            raise UsageError("give either variant= or budget_ms=, not both")
        if variant is not None:
            variant = self.variant_named(variant)
        check_arguments(budget_ms=budget_ms, batch=batch, threads=threads)
        if variant is not None:
            self.record(variant)  # an unknown (or non-string) label is refused now, not at the first call
        if budget_ms is not None:  # the budget's probe runs ``batch`` images at once: they must fit
            check_bundle_memory(self.manifest, self.door.root, "predict", batch, batch)
        name = self.resolve_backend(backend, precision)
        runners = self.load_all(name, precision, threads) if adaptive else {}  # switch without a load stall
        latencies: dict[str, Latency] = {}
        if budget_ms is not None:
            latencies = self.latencies(name, precision, batch, threads, runners)
        variant = self.choose(name, precision, variant, budget_ms, latencies)
        return Model(self, variant, name, precision, threads, budget_ms, latencies, adaptive, _runners=runners)

    def latencies(
        self,
        backend: str,
        precision: str,
        batch: int,
        threads: int | None = None,
        runners: dict[str, Runner] | None = None,
    ) -> dict[str, Latency]:
        """p99 per variant on this device: ``bench.json``/``latency.json`` rows measured here with
        this backend and batch, else a short probe of ``runners`` (default: ``load_all``),
        recorded in ``latency.json``. Shared-weight runs are slower, so they have rows of their
        own (backend ``ort-cpu shared``)."""
        check_arguments(batch=batch, threads=threads)
        key = f"{backend} shared" if self.shares(backend) else backend
        found = load_latencies(self.door, key, precision, batch)
        if set(found) >= set(self.variants):
            return found
        runners = runners or self.load_all(backend, precision, threads)
        return probe_latencies(self.door, runners, key, precision, batch, self.preprocess(self.variants[0]))

    def preprocess(self, label: str) -> Preprocess:
        return Preprocess.from_manifest(self.manifest.preprocessing, self.record(label).img_size)


@dataclass
class Model:
    """``model(images)`` → float32 logits ``[N, classes]`` (a feature model's embeddings ``[N, dims]``);
    ``.variant``/``.backend`` say what ran."""

    bundle: Bundle
    variant: str
    backend: str
    precision: str
    threads: int | None
    budget_ms: float | None
    latencies: dict[str, Latency]
    adaptive: bool = False
    window: int = 20
    _runners: dict[str, Runner] = field(default_factory=dict)
    _preprocess: dict[str, Preprocess] = field(default_factory=dict)
    _observed: deque[float] = field(default_factory=lambda: deque(maxlen=20))
    switches: list[tuple[str, str, str]] = field(default_factory=list)

    def runner(self, label: str) -> Runner:
        if label not in self._runners:
            self._runners[label] = self.bundle.runner(label, self.backend, self.precision, self.threads)
        return self._runners[label]

    def __call__(self, images: Any) -> np.ndarray:
        label = self.variant
        runner = self.runner(label)
        if label not in self._preprocess:
            self._preprocess[label] = self.bundle.preprocess(label)
        pixels = self._preprocess[label](images)
        if not self.adaptive:
            return run_in_batches(runner, pixels)
        start = time.perf_counter()
        logits = run_in_batches(runner, pixels)
        self._observe(label, (time.perf_counter() - start) * 1e3 / max(1, math.ceil(len(pixels) / _chunk(runner))))
        return logits

    def predict(self, images: Any, top_k: int = 5) -> list[list[Prediction]]:
        """The ``top_k`` classes per image; a feature model has none (``UsageError``: call ``model(images)``)."""
        if not self.bundle.classifier:
            raise UsageError(
                f"{self.bundle.manifest.name} is a feature model (output {self.bundle.output_name!r}, no classifier): "
                "it has no classes to predict; model(images) returns the embeddings"
            )
        check_arguments(top_k=top_k)
        logits = self(images)
        names = self.bundle.labels
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
        order = np.argsort(-logits, axis=1, kind="stable")[:, : max(1, top_k)]
        return [[Prediction(int(i), names[int(i)], float(p[i])) for i in row] for row, p in zip(order, probs)]

    def _observe(self, label: str, ms: float) -> None:
        """Adaptive mode: step to a faster variant when the observed p99 passes the budget, and
        back when the load lifts (measured p99 scaled by how slow this device runs right now)."""
        if not self.adaptive or self.budget_ms is None:
            return
        self._observed.append(ms)
        if len(self._observed) < min(5, self.window):
            return
        observed_p99 = float(np.percentile(list(self._observed), 99))
        load = observed_p99 / max(self.latencies[label].p99_ms, 1e-6)
        scaled = {k: Latency(v.p50_ms * load, v.p99_ms * load) for k, v in self.latencies.items()}
        try:
            choice = choose_variant(self.bundle.ranked(self.backend, self.precision, scaled), scaled, self.budget_ms)
        except UsageError:
            choice = min(self.latencies, key=lambda k: self.latencies[k].p99_ms)
        if choice != label:
            why = f"observed p99 {observed_p99:.2f} ms (x{load:.2f} of measured), budget {self.budget_ms:g} ms"
            log.info("adaptive: %s -> %s (%s)", label, choice, why)
            self.switches.append((label, choice, why))
            self.variant = choice
            self._observed.clear()


def _names(text: str, record: VariantRecord) -> bool:
    """Whether ``text`` (``16``, ``p16x16``, ``8_64``) is ``record``'s patch size (and image size)."""
    patch, _, img = (text[1:] if text[:1] in "pP" else text).partition("_")
    try:
        if to_size2(patch) != tuple(record.patch_size):
            return False
        return not img or to_size2(img, "image size") == tuple(record.img_size)
    except UsageError:
        return False


def check_file_shapes(record: VariantRecord, runner: Runner) -> None:
    """``BundleError`` when the loaded file's own fixed sizes are not the manifest's: the image
    size it is fed (``img_size``, 3 channels) and the output it is read by (``onnx.outputs[0].shape``,
    the class count the labels follow). A manifest edited to another size or class count would
    otherwise fail inside the runtime or index past the labels."""
    if "shapes" not in runner.details:  # an engine: its own profile is checked when it runs
        return
    got_in, got_out = runner.details["shapes"]
    wanted = [("takes", "img_size", ["N", 3, *record.img_size], got_in)]
    wanted.append(("gives", "onnx.outputs[0].shape", list(record.onnx.outputs[0].shape), got_out))
    for verb, field_name, want, got in wanted:
        fixed = [(w, g) for w, g in zip(want, got) if isinstance(w, int) and g is not None]
        if len(want) != len(got) or any(w != g for w, g in fixed):
            shown = ", ".join(str(g) if g is not None else "N" for g in got)
            raise BundleError(
                f"variant {record.label}: {runner.path.name} {verb} [{shown}], not the manifest's "
                f"{field_name} [{', '.join(map(str, want))}]"
            )


def _chunk(runner: Runner) -> int:
    return runner.static_batch or runner.max_batch or 64


def run_in_batches(runner: Runner, pixels: np.ndarray) -> np.ndarray:
    """Run ``pixels`` in chunks the runner accepts (a static batch is padded, then trimmed)."""
    size = _chunk(runner)
    if len(pixels) == size or (runner.static_batch is None and len(pixels) <= size):
        return runner(pixels)
    return run_batched(runner, pixels, size, pad=runner.static_batch is not None)


def open_bundle(path: str | Path) -> Bundle:
    return Bundle.open(path)


def predict_files(
    bundle: Bundle, files: Sequence[Path], model: Model, top_k: int
) -> list[tuple[Path, list[Prediction] | np.ndarray | str]]:
    """Per file: its predictions (a feature model's embedding, float32 ``[dims]``), or why it could
    not be read or preprocessed (the others are still run)."""

    results: list[tuple[Path, list[Prediction] | np.ndarray | str]] = []
    for path in files:
        try:
            pixels = model.bundle.preprocess(model.variant)([read_image(path)])  # too small for the crop...
        except UsageError as exc:
            results.append((path, str(exc)))
            continue
        results.append((path, model.predict(pixels, top_k)[0] if bundle.classifier else model(pixels)[0]))
    return results


def embedding_summary(embedding: np.ndarray, shown: int = 4) -> str:
    """``embedding 384-d, norm 12.31, [0.1234, -0.0561, ...]``: what ``predict`` prints of one."""
    head = ", ".join(f"{x:.4f}" for x in embedding[:shown]) + (", ..." if len(embedding) > shown else "")
    return f"embedding {len(embedding)}-d, norm {float(np.linalg.norm(embedding)):.4g}, [{head}]"
