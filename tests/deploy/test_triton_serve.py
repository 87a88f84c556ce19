"""A real Triton Inference Server (nvidia-pytriton's tritonserver, CPU, 127.0.0.1 only) on
``flexiexport triton --backend python`` repositories, asked with ``tritonclient`` over HTTP and gRPC.

One server per module on a bundle whose variants differ in image size (``-p 8 16 24 --img-size
auto``: p24 runs at 72x72, where the demo, trained at 64, reads few digits right), with latencies
for this CPU written into the bundle so that the budget's choice is known in advance: p8 5 ms,
p16 2 ms, p24 1 ms (p99, batch 1).
Skipped, with the reason, where the server cannot start here.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exporter.bundle.door import Bundle as Door
from exporter.core.errors import EnvironmentMissing, FlexiExportError
from exporter.core.machine import machine_key
from exporter.deploy.repository import ENTRY_MODEL, config_text, write_repository
from exporter.deploy.server import TritonServer, find_tritonserver, free_port
from exporter.runtime import Bundle
from exporter.source.demo import digits_to_uint8, load_demo_digits

from conftest import run_cli

try:
    import tritonclient.grpc as grpc
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    NO_CLIENT = ""
except (ImportError, RuntimeError) as exc:  # tritonclient without its http/grpc extras raises RuntimeError
    NO_CLIENT = f"tritonclient[http,grpc] is in the dev extra ({exc})"
    InferenceServerException = Exception  # type: ignore[misc,assignment]
needs_client = pytest.mark.skipif(bool(NO_CLIENT), reason=NO_CLIENT)

LATENCY = {"p8": 5.0, "p16": 2.0, "p24": 1.0}  # p99 ms written for this CPU: the budget's choice is known
BUDGETS = {None: "p8", 1e6: "p8", 3.0: "p16", 1.5: "p24"}
MAX_BATCH = 8
READ_RIGHT = [1, 2, 3, 4]  # held-out digits that p8 and p16 read right (p16 takes the first 7 for a 0)
VARIANTS = {"p8": "flexivit_demo_p8", "p16": "flexivit_demo_p16", "p24": "flexivit_demo_p24"}
# The server's own failures that mean "cannot run here", not "our repository is wrong".
CANNOT_RUN = (
    "misreads numpy",
    "error while loading shared libraries",
    "cannot start",
    "GLIBC",
    "no Python backend stub",
)


def two_ports() -> tuple[int, int]:
    first = free_port()
    second = free_port()
    while second == first:
        second = free_port()
    return first, second


def write_latencies(bundle: Path) -> None:
    rows = [
        {"backend": "ort-cpu", "variant": label, "batch": 1, "p50_ms": p99 / 2, "p99_ms": p99}
        for label, p99 in LATENCY.items()
    ]
    (bundle / "latency.json").write_text(json.dumps({"machine": machine_key(), "rows": rows}))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "b"
    result = run_cli("build", "-p", "8", "16", "24", "--img-size", "auto", "--out", str(out), "-q")
    assert result.exit_code == 0, result.output + result.stderr
    write_latencies(out)
    return out


def start_server(bundle: Path, work: Path, dynamic_batching: bool = True) -> TritonServer:
    """A ready server on a fresh Python-backend repository of ``bundle`` (ort-cpu), or a skip."""
    try:
        install = find_tritonserver()
    except EnvironmentMissing as exc:
        pytest.skip(f"no tritonserver here: {exc}")
    write_repository(Door.open(bundle), work / "models", "python", MAX_BATCH, "fp32", "ort-cpu", dynamic_batching)
    server = TritonServer(install, work / "models", work, *two_ports())
    try:
        server.start()
        server.wait_ready(300)
    except FlexiExportError as exc:
        server.stop()
        if any(marker in str(exc) for marker in CANNOT_RUN):
            pytest.skip(f"tritonserver cannot run here: {exc}")
        raise
    return server


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory) -> Iterator[TritonServer]:
    if NO_CLIENT:
        pytest.skip(NO_CLIENT)
    started = start_server(bundle, tmp_path_factory.mktemp("server"))
    yield started
    assert started.stop() == 0
    assert not [e for e in started.errors() if "Stub process" in e], "a model instance crashed"


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """16 held-out demo digits as uint8 RGB 64x64 images, and their labels."""
    images, labels = load_demo_digits("test")
    return digits_to_uint8(images[:16], 64), labels[:16]


@pytest.fixture(scope="module")
def runtime(bundle) -> dict[str, Any]:
    """The runtime's own models per variant (ort-cpu), to ask the same questions directly."""
    opened = Bundle.open(bundle)
    return {label: opened.model(variant=label, backend="ort-cpu") for label in LATENCY}


def open_clients(server: TritonServer) -> dict[str, Any]:
    return {
        "http": http.InferenceServerClient(server.http_url[7:]),
        "grpc": grpc.InferenceServerClient(server.grpc_url),
    }


@pytest.fixture(scope="module")
def clients(server) -> Iterator[dict[str, Any]]:
    """An HTTP and a gRPC client, closed before the server stops (an open connection holds it up)."""
    opened = open_clients(server)
    yield opened
    for client in opened.values():
        client.close()


def tensor(module: Any, name: str, array: np.ndarray) -> Any:
    dtype = {np.dtype(np.uint8): "UINT8", np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64"}[array.dtype]
    inp = module.InferInput(name, list(array.shape), dtype)
    inp.set_data_from_numpy(array)
    return inp


def ask(client: Any, model: str, inputs: dict[str, np.ndarray], **kw: Any) -> Any:
    module = http if isinstance(client, http.InferenceServerClient) else grpc
    return client.infer(model, [tensor(module, k, v) for k, v in inputs.items()], **kw)


def stats(server: TritonServer, model: str) -> dict[str, int]:
    """Triton's ``/v2/models/<m>/stats``: requests answered, failed, images, batches executed."""
    status, body = server.get(f"/v2/models/{model}/stats")
    assert status == 200, body
    s = body["model_stats"][0]
    inference = s["inference_stats"]
    return {
        "success": inference["success"]["count"],
        "fail": inference["fail"]["count"],
        "images": s["inference_count"],
        "executions": s["execution_count"],
    }


def settled_stats(server: TritonServer, model: str) -> dict[str, int]:
    """``stats`` once two reads 0.2 s apart agree: the requests of an earlier test are counted just
    after their responses are sent, and a snapshot taken before that miscounts this test's."""
    now = stats(server, model)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.2)
        again = stats(server, model)
        if again == now:
            break
        now = again
    return now


def stats_after(server: TritonServer, model: str, before: dict[str, int], requests: int) -> dict[str, int]:
    """``stats`` once ``requests`` more have been counted (Triton counts a request just after its
    response is sent), or after 10 s, whatever they then say."""
    deadline = time.monotonic() + 10
    while True:
        now = stats(server, model)
        if now["success"] + now["fail"] >= before["success"] + before["fail"] + requests or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def test_every_variant_answers_over_http_and_grpc_as_the_runtime_does(clients, bundle, digits):
    opened = Bundle.open(bundle)
    for label, model in VARIANTS.items():
        pixels = opened.preprocess(label)(digits[0][:3])
        expected = opened.runner(label, "ort-cpu")(pixels)
        for protocol, client in clients.items():
            logits = ask(client, model, {"pixel_values": pixels}).as_numpy("logits")
            assert np.array_equal(logits, expected), (label, protocol, np.abs(logits - expected).max())


def test_the_entry_answers_with_the_variant_the_budget_names(clients, bundle, digits, runtime):
    images, labels = digits
    for protocol, client in clients.items():
        for budget, label in BUDGETS.items():
            params = None if budget is None else {"budget_ms": budget}
            result = ask(client, ENTRY_MODEL, {"images": images[:4]}, parameters=params)
            assert result.as_numpy("variant").ravel().tolist() == [label.encode()] * 4, (protocol, budget)
            expected = runtime[label](images[:4])
            logits = result.as_numpy("logits")
            assert np.array_equal(logits, expected), (protocol, budget, np.abs(logits - expected).max())
        for params in ({"budget_ms": 1e6}, {"budget_ms": 3}, {"variant": "p16"}):  # the right digits
            result = ask(client, ENTRY_MODEL, {"images": images[READ_RIGHT]}, parameters=params)
            assert np.array_equal(result.as_numpy("logits").argmax(1), labels[READ_RIGHT])
        pixels = Bundle.open(bundle).preprocess("p16")(images[:2])
        result = ask(client, ENTRY_MODEL, {"pixel_values": pixels}, parameters={"budget_ms": 3})
        assert np.array_equal(result.as_numpy("logits"), runtime["p16"](pixels))


FAULTS = [
    # (model, inputs, parameters, words the error must hold)
    ("flexivit_demo_p8", {"pixel_values": np.zeros((1, 3, 32, 32), np.float32)}, None, "shape"),
    ("flexivit_demo_p8", {"pixel_values": np.zeros((1, 3, 64, 64), np.float64)}, None, "FP64"),
    ("flexivit_demo_p8", {"pixel_values": np.zeros((MAX_BATCH + 1, 3, 64, 64), np.float32)}, None, "batch"),
    (ENTRY_MODEL, {"images": np.zeros((1, 64, 64, 4), np.uint8)}, None, "shape"),
    (
        ENTRY_MODEL,
        {"images": np.zeros((1, 64, 64, 3), np.uint8)},
        {"budget_ms": 0.5},
        "no variant fits a budget of 0.5 ms",
    ),
    (ENTRY_MODEL, {"images": np.zeros((1, 64, 64, 3), np.uint8)}, {"budget_ms": "soon"}, "must be a positive number"),
    (ENTRY_MODEL, {"images": np.zeros((1, 64, 64, 3), np.uint8)}, {"budget_ms": -3}, "must be a positive number"),
    (ENTRY_MODEL, {"images": np.zeros((1, 64, 64, 3), np.uint8)}, {"variant": "p4"}, "no variant 'p4'"),
    (ENTRY_MODEL, {"images": np.zeros((1, 64, 64, 3), np.uint8)}, {"variant": "p8", "budget_ms": 9}, "not both"),
    (ENTRY_MODEL, {"pixel_values": np.zeros((1, 3, 64, 64), np.float32)}, {"variant": "p24"}, "[N, 3, 72, 72]"),
    (
        ENTRY_MODEL,
        {"images": np.zeros((1, 64, 64, 3), np.uint8), "pixel_values": np.zeros((1, 3, 64, 64), np.float32)},
        None,
        "send either",
    ),
]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_bad_request_gets_a_clear_error_and_the_server_keeps_serving(server, clients, digits, runtime, protocol):
    client = clients[protocol]
    before = settled_stats(server, ENTRY_MODEL)
    for model, inputs, params, words in FAULTS:
        with pytest.raises(InferenceServerException) as caught:
            ask(client, model, inputs, parameters=params)
        assert words in caught.value.message(), (model, params, caught.value.message())
    ours = sum(1 for m, _, p, w in FAULTS if m == ENTRY_MODEL and w != "shape")  # Triton refuses the rest itself
    after = stats_after(server, ENTRY_MODEL, before, ours)
    # Triton refuses bad shapes and dtypes itself; the errors the model answers with count as
    # executions that succeeded (Triton's Python backend counts requests run, not their outcome).
    assert after["success"] - before["success"] == ours and after["fail"] == before["fail"], (before, after)
    assert server.get(f"/v2/models/{ENTRY_MODEL}/ready")[0] == 200
    result = ask(client, ENTRY_MODEL, {"images": digits[0][:2]}, parameters={"budget_ms": 1.5})
    assert np.array_equal(result.as_numpy("logits"), runtime["p24"](digits[0][:2]))


@dataclass
class Answer:
    request_id: str
    answered_id: str
    picked: list[int]
    expected: str  # the variant the request's budget names
    variants: list[bytes]
    logits: np.ndarray
    seconds: float


@dataclass
class Load:
    answers: list[Answer]
    failures: list[str]
    requests: int
    wall_s: float

    @property
    def images(self) -> int:
        return sum(len(a.picked) for a in self.answers)

    def numbers(self) -> dict[str, Any]:
        ms = np.array([a.seconds for a in self.answers]) * 1e3
        return {
            "requests": self.requests,
            "images": self.images,
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "images_per_s": round(self.images / self.wall_s, 1),
        }


def run_load(
    server: TritonServer, digits: np.ndarray, threads: int = 8, per_thread: int = 50, largest: int = MAX_BATCH
) -> Load:
    """``threads`` clients (HTTP and gRPC alternately) × ``per_thread`` requests to the entry model,
    mixed budgets and batch sizes 1..``largest``, each with its own request id."""
    answers: list[Answer] = []
    failures: list[str] = []

    def client_thread(t: int) -> None:
        opened = open_clients(server)
        try:
            ask_many(t, list(opened.values())[t % 2])
        finally:
            for client in opened.values():
                client.close()

    def ask_many(t: int, client: Any) -> None:
        rng = np.random.default_rng(t)
        for i in range(per_thread):
            picked = sorted(rng.choice(len(digits), int(rng.integers(1, largest + 1)), replace=False).tolist())
            budget = list(BUDGETS)[int(rng.integers(len(BUDGETS)))]
            params = None if budget is None else {"budget_ms": budget}
            request_id = f"{t}-{i}"
            start = time.perf_counter()
            try:
                result = ask(client, ENTRY_MODEL, {"images": digits[picked]}, request_id=request_id, parameters=params)
            except InferenceServerException as exc:
                failures.append(f"{request_id}: {exc}")
                continue
            seconds = time.perf_counter() - start
            response = result.get_response()
            answered = response["id"] if isinstance(response, dict) else response.id
            variants = result.as_numpy("variant").ravel().tolist()
            answers.append(
                Answer(request_id, answered, picked, BUDGETS[budget], variants, result.as_numpy("logits"), seconds)
            )

    start = time.perf_counter()
    workers = [threading.Thread(target=client_thread, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return Load(answers, failures, threads * per_thread, time.perf_counter() - start)


def check_load(server: TritonServer, load: Load, digits: np.ndarray, runtime: dict, before: dict) -> dict[str, Any]:
    """Every request answered once, by the variant its budget names, with the runtime's logits for
    the same images; Triton's statistics count every request and image."""
    assert not load.failures, load.failures[:3]
    assert sorted(a.request_id for a in load.answers) == sorted(
        f"{t}-{i}" for t in range(8) for i in range(load.requests // 8)
    )
    exact = 0
    for a in load.answers:
        assert a.answered_id == a.request_id and a.variants == [a.expected.encode()] * len(a.picked), a
        expected = runtime[a.expected](digits[a.picked])
        # Dynamic batching runs requests together: a row's last bits may depend on the batch it ran in.
        assert np.allclose(a.logits, expected, rtol=1e-4, atol=1e-5) and np.array_equal(
            a.logits.argmax(1), expected.argmax(1)
        )
        exact += bool(np.array_equal(a.logits, expected))
    counted = {ENTRY_MODEL: load.requests}
    counted.update({model: sum(a.expected == label for a in load.answers) for label, model in VARIANTS.items()})
    after = {m: stats_after(server, m, before[m], counted[m]) for m in before}
    delta = {m: {k: after[m][k] - before[m][k] for k in after[m]} for m in before}
    assert delta[ENTRY_MODEL]["success"] == load.requests and delta[ENTRY_MODEL]["images"] == load.images
    for label, model in VARIANTS.items():  # one BLS request per entry request, to the variant it named
        mine = [a for a in load.answers if a.expected == label]
        assert delta[model]["success"] == len(mine) and delta[model]["images"] == sum(len(a.picked) for a in mine)
    executions = {m: d["executions"] for m, d in delta.items()}
    return {**load.numbers(), "bit_exact_share": round(exact / len(load.answers), 3), "executions": executions}


def test_a_bounded_load_is_answered_in_full_and_counted(server, digits, runtime):
    before = {m: settled_stats(server, m) for m in [ENTRY_MODEL, *VARIANTS.values()]}
    load = run_load(server, digits[0])
    print("dynamic batching:", json.dumps(check_load(server, load, digits[0], runtime, before)))


@pytest.mark.slow
def test_load_with_and_without_dynamic_batching(server, bundle, digits, runtime, tmp_path):
    """The README's numbers: the same loads (batches of 1..8 images, and single images) on this
    server and on one without dynamic batching."""
    results = {}
    for name, target in (("dynamic batching", server), ("no dynamic batching", None)):
        started = target or start_server(bundle, tmp_path, dynamic_batching=False)
        try:
            for largest in (MAX_BATCH, 1):
                before = {m: settled_stats(started, m) for m in [ENTRY_MODEL, *VARIANTS.values()]}
                load = run_load(started, digits[0], per_thread=100, largest=largest)
                results[f"{name}, 1..{largest} images"] = check_load(started, load, digits[0], runtime, before)
        finally:
            if target is None:
                started.stop()
    for name, numbers in results.items():
        print(f"{name}: {json.dumps(numbers)}")


def test_onnx_and_tensorrt_repositories_fail_only_for_their_missing_backend(bundle, tmp_path):
    """The wheel's server has no ONNX Runtime or TensorRT backend: each such model must fail for that
    reason alone. Triton parses each config and checks its name before it looks for the backend
    (a control config with an unknown field shows that it would say so); it validates dims and
    batching only once the backend is loaded, which this server cannot do."""
    try:
        install = find_tritonserver()
    except EnvironmentMissing as exc:
        pytest.skip(f"no tritonserver here: {exc}")
    repo = tmp_path / "models"
    names = write_repository(Door.open(bundle), repo, "onnx", MAX_BATCH)
    record = Door.open(bundle).manifest.variants[0]
    plans = {"trt_one": {"": "model.plan"}, "trt_per_gpu": {"8.7": "model_sm87.plan", "7.5": "model_sm75.plan"}}
    for name, files in plans.items():
        (repo / name / "1").mkdir(parents=True)
        for filename in files.values():
            (repo / name / "1" / filename).write_bytes(b"an engine is opened only by the TensorRT backend")
        cc = {k: v for k, v in files.items() if k}
        (repo / name / "config.pbtxt").write_text(config_text(name, record, "tensorrt_plan", MAX_BATCH, cc))
    (repo / "control" / "1").mkdir(parents=True)
    (repo / "control" / "config.pbtxt").write_text('name: "control"\nplatform: "onnxruntime_onnx"\nmax_batch: 3\n')
    server = TritonServer(install, repo, tmp_path, *two_ports(), exit_on_error=False)
    try:
        server.start()
        server.wait_ready(120, live_only=True)
        index = {m["name"]: m for m in server.model_index()}
    finally:
        server.stop()
    expected = {**dict.fromkeys(names, "onnxruntime"), **dict.fromkeys(plans, "tensorrt")}
    for name, backend in expected.items():
        assert index[name]["state"] == "UNAVAILABLE", index[name]
        assert f"unable to find backend library for backend '{backend}'" in index[name]["reason"], index[name]
    assert "unable to find backend library" not in index["control"].get("reason", "")
    assert any("control" in e and "failed to read text proto" in e for e in server.errors())


@needs_client
def test_flexiexport_serve_answers_and_stops_cleanly(bundle):
    """``flexiexport serve`` in its own process (torch, timm and onnx blocked): ready, the right
    digit for the budget over HTTP, then SIGTERM stops the server and removes the repository."""
    from tests.bundle.test_reference import NO_TORCH

    port, grpc_port = two_ports()
    command = [sys.executable, "-c", NO_TORCH, "serve", str(bundle), "--port", str(port), "--grpc-port", str(grpc_port)]
    with serving(command) as (process, ready, repository):
        assert f"ready on http://127.0.0.1:{port} (HTTP) and 127.0.0.1:{grpc_port} (gRPC)" in ready
        assert (repository / ENTRY_MODEL / "config.pbtxt").is_file()
        images, labels = load_demo_digits("test")
        client = http.InferenceServerClient(f"127.0.0.1:{port}")
        batch = digits_to_uint8(images[READ_RIGHT], 64)
        result = ask(client, ENTRY_MODEL, {"images": batch}, parameters={"budget_ms": 3})
        assert result.as_numpy("variant")[0, 0] == b"p16"
        assert np.array_equal(result.as_numpy("logits").argmax(1), labels[READ_RIGHT])
        client.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        assert "stopped (tritonserver exit code 0)" in process.stderr.read()  # type: ignore[union-attr]
        assert not repository.parent.exists()


@contextlib.contextmanager
def serving(command: list[str]) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    """``flexiexport serve`` in its own process: (the process, its ready line, the repository it
    wrote), once ready; skipped where no tritonserver can run; killed on the way out if still up."""
    try:
        find_tritonserver()
    except EnvironmentMissing as exc:
        pytest.skip(f"no tritonserver here: {exc}")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = process.stdout.readline()  # type: ignore[union-attr]
        if not ready:
            error = process.stderr.read()  # type: ignore[union-attr]
            if any(marker in error for marker in CANNOT_RUN):
                pytest.skip(f"tritonserver cannot run here: {error.strip()}")
            raise AssertionError(error)
        lines = [process.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
        yield process, ready, Path(lines[2].split("repository: ", 1)[1].split(" (removed", 1)[0])
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_refuses_bad_input_in_one_line(bundle, tmp_path, monkeypatch):
    import socket

    from conftest import one_line_error

    result = run_cli("serve", str(tmp_path / "nothing"))
    assert result.exit_code == 2 and "does not exist" in one_line_error(result)
    result = run_cli("serve", str(bundle), "--port", "70000")
    assert result.exit_code == 2 and "--port must be a port number from 0 to 65535" in one_line_error(result)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", str(bundle), "--port", str(port), "--grpc-port", "0")
        assert result.exit_code == 2 and f"--port {port}: 127.0.0.1:{port} is in use" in one_line_error(result)
    result = run_cli("serve", str(bundle), "--port", "0", "--tritonserver", str(tmp_path / "nothing"))
    assert result.exit_code == 2 and "is not an executable file" in one_line_error(result)
    monkeypatch.setattr("exporter.deploy.server.pytriton_root", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    result = run_cli("serve", str(bundle), "--port", "0")
    assert result.exit_code == 4 and "no tritonserver found" in one_line_error(result)


@pytest.mark.slow
def test_a_killed_serve_takes_its_server_with_it(bundle):
    """SIGKILL leaves serve no chance to clean up: the server still goes (it is sent SIGTERM when
    its parent dies), and the next serve removes the repository folder left behind."""
    import tempfile

    from exporter.deploy.server import remove_stale_work_folders

    with serving([sys.executable, "-m", "exporter.cli", "serve", str(bundle), "--port", "0"]) as (process, _, repo):
        work = repo.parent
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 1
        process.kill()
        process.wait()
        deadline = time.monotonic() + 30
        while Path(f"/proc/{children[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not Path(f"/proc/{children[0]}").exists(), "tritonserver outlived serve"
        assert work.is_dir() and work.parent == Path(tempfile.gettempdir())
        assert work in remove_stale_work_folders(work.parent) and not work.exists()


def test_a_failed_serve_keeps_the_log_it_names(bundle):
    """``serve``'s "its log:" pointed into the work folder it had already removed (issue 25)."""
    import re

    from conftest import one_line_error

    try:
        find_tritonserver()
    except EnvironmentMissing as exc:
        pytest.skip(f"no tritonserver here: {exc}")
    result = run_cli("serve", str(bundle), "--port", "0", "--ready-timeout", "0.01")
    line = one_line_error(result)
    assert result.exit_code == 4 and "was not ready after 0.01 s" in line, line
    found = re.search(r"its log: (\S+\.log)\)", line)
    assert found, line
    log = Path(found.group(1))
    assert log.is_file() and "flexiexport-serve-" not in str(log)  # not inside the removed work folder
    log.unlink()
