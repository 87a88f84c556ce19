"""``flexiexport serve``: a bundle served by a local Triton Inference Server until stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from typing_extensions import TypedDict, Unpack

from exporter.cli.group import cli, debug_option
from exporter.cli.params import RUNTIME_BACKEND_HELP
from exporter.cli.render import (
    console,
    print_endpoints,
    safe,
)
from exporter.cli.triton import repository_max_batch
from exporter.core.errors import (
    FlexiExportError,
    UsageError,
)
from exporter.core.precision import Precision
from exporter.deploy.server import (
    TritonServer,
    check_port,
    find_tritonserver,
    kept_log,
    remove_stale_work_folders,
    work_folder_prefix,
)


class ServeFlags(TypedDict):
    """``serve``'s options, as Click passes them."""

    port: int
    grpc_port: int | None
    binary: Path | None
    backend: str
    precision: str
    max_batch: int | None
    dynamic_batching: bool
    ready_timeout: float
    verbose: bool
    debug: bool


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--port", type=int, default=8000, show_default=True, help="HTTP port on 127.0.0.1 (0: any free port).")
@click.option("--grpc-port", type=int, help="gRPC port on 127.0.0.1 [default: --port + 1; 0: any free port].")
@click.option(
    "--tritonserver",
    "binary",
    type=click.Path(path_type=Path),
    help="The tritonserver to run [default: nvidia-pytriton's, else tritonserver on PATH].",
)
@click.option("--backend", default="auto", show_default=True, help="The runtime's " + RUNTIME_BACKEND_HELP)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True)
@click.option("--max-batch", type=int, help="max_batch_size [default: the engine profile's batch.max, else 8].")
@click.option("--dynamic-batching/--no-dynamic-batching", default=True, show_default=True)
@click.option("--ready-timeout", type=float, default=300, show_default=True, help="Seconds to wait for the models.")
@click.option("--verbose", is_flag=True, help="Show the server's own log.")
@debug_option
def serve(bundle: Path, **kw: Unpack[ServeFlags]) -> None:
    """Serve a bundle on a local Triton Inference Server until Ctrl-C (or SIGTERM).

    The 'flexivit' model takes uint8 images [N, H, W, 3] (or pixel_values) and the request
    parameter budget_ms (or variant), and answers with logits and the variant that ran.

    \b
    flexiexport serve bundles/flexivit-demo --port 8000
    """
    import sys
    import tempfile

    from exporter.bundle.door import Bundle
    from exporter.bundle.write import mark_temporary
    from exporter.deploy.repository import write_repository
    from exporter.runtime import Bundle as RuntimeBundle

    opened = Bundle.open(bundle)
    max_batch = repository_max_batch(opened.manifest, kw["max_batch"])
    if not 0 < kw["ready_timeout"] <= 86400:  # inf would wait forever for a model that never loads
        raise UsageError(f"--ready-timeout must be a number of seconds from 0 to 86400, got {kw['ready_timeout']}")
    http_port = check_port(kw["port"], "--port")
    grpc_default = kw["port"] + 1 if kw["port"] else 0
    grpc_port = check_port(kw["grpc_port"] if kw["grpc_port"] is not None else grpc_default, "--grpc-port")
    if grpc_port == http_port:
        raise UsageError(f"--grpc-port must differ from --port ({http_port})")
    install = find_tritonserver(kw["binary"])
    runtime = RuntimeBundle(opened)
    backend = runtime.resolve_backend(kw["backend"], kw["precision"])
    # The budget's latencies: bench.json/latency.json rows of this CPU, else a probe now, on a quiet
    # machine (recorded in the bundle's latency.json, which the repository copies) rather than
    # inside the server while every model loads.
    runtime.latencies(backend, kw["precision"], 1)
    remove_stale_work_folders(Path(tempfile.gettempdir()))
    with tempfile.TemporaryDirectory(prefix=work_folder_prefix()) as tmp:
        work = Path(tmp)
        mark_temporary(work)  # what lets a later serve remove it if this one is killed outright
        names = write_repository(
            opened,
            work / "models",
            "python",
            max_batch,
            Precision(kw["precision"]),
            kw["backend"],
            kw["dynamic_batching"],
        )
        log_to = sys.stderr if kw["verbose"] else None
        log_path = None if log_to else kept_log()  # kept where an error names it; removed after a clean stop
        server = TritonServer(install, work / "models", work, http_port, grpc_port, log_to=log_to, log_path=log_path)
        console(stderr=True).print(safe(f"starting {install.binary} on {len(names)} models (runtime {backend}) ..."))
        code = serve_until_stopped(server, names, kw["ready_timeout"])
        if log_path is not None:
            log_path.unlink(missing_ok=True)
    console(stderr=True).print(safe(f"stopped (tritonserver exit code {code}); removed {work}"))


def serve_until_stopped(server: Any, names: list[str], ready_timeout: float) -> int | None:
    """Start, print the endpoints once ready, wait; Ctrl-C or SIGTERM stops the server (and is no error)."""
    from exporter.bundle.write import signals_deferred
    from exporter.deploy.repository import ENTRY_MODEL

    try:
        server.start()
        server.wait_ready(ready_timeout)
        print_endpoints(server, names, ENTRY_MODEL)
        code = server.wait()
        raise FlexiExportError(f"tritonserver stopped by itself (exit code {code}); its log: {server.log_path}")
    except KeyboardInterrupt as exc:
        name = str(exc.args[0]) if exc.args and str(exc.args[0]).startswith("SIG") else "SIGINT"
        console(stderr=True).print(safe(f"{name}: stopping tritonserver ..."))
    finally:
        with signals_deferred():
            code = server.stop()
    return code
