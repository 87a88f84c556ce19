"""A local Triton Inference Server process on a model repository (``flexiexport serve``, tests).

Which ``tritonserver``: the one given, else the one nvidia-pytriton's wheel ships
(``pytriton/tritonserver``: Triton 2.51 with the Python backend and its stubs for Python
3.8-3.13, no ONNX Runtime or TensorRT backend), else ``tritonserver`` on PATH. For the wheel's
server, a backend folder is prepared beside the repository with the stub of this Python linked
in (what PyTriton itself does), and the wheel's libraries go on ``LD_LIBRARY_PATH``.

The Python backend's stub embeds this environment's interpreter: it finds ``python3`` on PATH
(this interpreter's folder is put first) and that interpreter's site-packages; ``PYTHONPATH``
starts with the folder of the running ``exporter`` package, which the repository's ``model.py``
honours, so the server runs the flexiexport that wrote the repository.

The server binds 127.0.0.1 only, metrics off. It runs in its own session (a Ctrl-C in the
terminal reaches this process, which stops the server and waits for it) and, on Linux, is
sent SIGTERM if this process dies.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from typing_extensions import NotRequired, TypedDict

import exporter
from exporter.core.errors import EnvironmentMissing, UsageError, param
from exporter.core.locks import process_alive
from exporter.core.names import printable

log = logging.getLogger(__name__)
HOST = "127.0.0.1"
# Never through a proxy: the server is on this machine.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ModelState(TypedDict):
    """One model of ``/v2/repository/index`` (Triton's repository extension)."""

    name: str
    version: NotRequired[str]
    state: NotRequired[str]  # READY, UNAVAILABLE, LOADING...; absent for a model never loaded
    reason: NotRequired[str]  # why it is not READY


class ServerMetadata(TypedDict, total=False):
    """``/v2`` (KServe's server metadata); empty when the server did not answer it."""

    name: str
    version: str
    extensions: list[str]


@dataclass(frozen=True)
class ServerInstall:
    """A ``tritonserver`` binary, and for nvidia-pytriton's wheel: its backends, this Python's stub, its libraries."""

    binary: Path
    backends: Path | None = None
    stub: Path | None = None
    libs: Path | None = None
    backend_files: tuple[tuple[str, Path], ...] = ()  # (name, target) to link: python_backend_files

    @property
    def python_backend(self) -> bool:
        return self.stub is not None


def pytriton_root() -> Path | None:
    """``site-packages/pytriton`` of nvidia-pytriton's wheel, found without importing it."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def wheel_install(binary: Path) -> ServerInstall:
    """``binary`` with the wheel's layout around it (``../backends``, ``../python_backend_stubs``) when it has one."""
    home = binary.resolve().parent.parent
    stubs = home / "python_backend_stubs"
    if not stubs.is_dir():
        return ServerInstall(binary)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = stubs / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = ", ".join(sorted(p.name for p in stubs.iterdir() if p.is_dir()))
        raise EnvironmentMissing(f"{binary} has no Python backend stub for Python {version} (it has {have})")
    libs = home.parent.parent / "nvidia_pytriton.libs"
    files = python_backend_files(binary, home / "backends" / "python")
    return ServerInstall(binary, home / "backends", stub, libs if libs.is_dir() else None, files)


PYTHON_BACKEND = ("libtriton_python.so", "triton_python_backend_utils.py")  # what the backend cannot run without
REINSTALL = f"pip install --force-reinstall nvidia-pytriton (it ships one), or pass {param('explicit')} PATH"


def python_backend_files(binary: Path, folder: Path) -> tuple[tuple[str, Path], ...]:
    """The entries of the install's ``backends/python`` to link beside the repository (name, target):
    each regular file or folder but the install's own stub (this Python's replaces it) and
    ``__pycache__``. The install is data, not ours: a dangling link, a loop of links, a FIFO or a
    device there is left out (never opened: a FIFO would block); ``EnvironmentMissing`` when the
    folder or the backend's own files are not there."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise EnvironmentMissing(
            f"{binary} has no usable Python backend ({folder}: {exc.strerror or exc}): {REINSTALL}"
        ) from None
    kept: dict[str, Path] = {}
    regular, skipped = set(), []
    for entry in entries:
        if entry.name in ("__pycache__", "triton_python_backend_stub"):
            continue
        try:
            mode = os.stat(entry.path).st_mode  # follows links: what Triton would open
        except OSError:
            mode = 0  # dangling, a loop of links, unreadable
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
            kept[entry.name] = Path(os.path.realpath(entry.path))
            regular.update([entry.name] if stat.S_ISREG(mode) else [])
        else:
            skipped.append(printable(entry.name))
    missing = [name for name in PYTHON_BACKEND if name not in regular]
    if missing:
        raise EnvironmentMissing(f"{binary}'s Python backend ({folder}) lacks {', '.join(missing)}: {REINSTALL}")
    if skipped:
        log.warning("left out of %s's Python backend (not a file or folder): %s", folder, ", ".join(skipped))
    return tuple(kept.items())


def find_tritonserver(explicit: Path | None = None) -> ServerInstall:
    """The server to run: ``explicit``, else nvidia-pytriton's, else ``tritonserver`` on PATH."""
    if explicit is not None:
        if not explicit.is_file() or not os.access(explicit, os.X_OK):
            raise UsageError(f"{param('explicit')} {printable(str(explicit))!r} is not an executable file")
        return wheel_install(explicit)
    root = pytriton_root()
    if root is not None and (root / "tritonserver" / "bin" / "tritonserver").is_file():
        return wheel_install(root / "tritonserver" / "bin" / "tritonserver")
    found = shutil.which("tritonserver")
    if found:
        return wheel_install(Path(found))
    raise EnvironmentMissing(
        "no tritonserver found: pip install nvidia-pytriton (it ships one), put tritonserver on PATH, "
        f"or pass {param('explicit')} PATH"
    )


def prepare_backends(install: ServerInstall, folder: Path) -> Path | None:
    """A backend folder whose ``python/`` holds the wheel's Python backend and this Python's stub
    (links, not copies); None for a server that finds its own backends."""
    if install.backends is None or install.stub is None:
        return None
    python = folder / "python"
    python.mkdir(parents=True)
    for name, target in install.backend_files:  # checked when the install was found (``python_backend_files``)
        (python / name).symlink_to(target)
    # Triton's own set-up puts a stub in the install's folder too: this Python's replaces it.
    (python / "triton_python_backend_stub").symlink_to(install.stub.resolve())
    return folder


def server_environment(install: ServerInstall) -> dict[str, str]:
    """This environment, with the server's libraries on LD_LIBRARY_PATH, this Python first on PATH
    and this flexiexport first on PYTHONPATH."""
    env = dict(os.environ)

    def prepend(key: str, *paths: Path | str | None) -> None:
        parts = [str(p) for p in paths if p] + [p for p in env.get(key, "").split(os.pathsep) if p]
        env[key] = os.pathsep.join(dict.fromkeys(parts))

    libdir = sysconfig.get_config_var("LIBDIR")
    prepend("LD_LIBRARY_PATH", install.libs, libdir if libdir and Path(libdir).is_dir() else None)
    prepend("PATH", Path(sys.executable).parent)
    prepend("PYTHONPATH", Path(exporter.__file__).resolve().parent.parent)
    return env


def kept_log() -> Path:
    """A new, empty file for the server's log, outside the work folder (which goes when ``serve``
    ends), so that the path an error names can still be read; ``serve`` removes it after a clean
    stop."""
    import tempfile

    fd, name = tempfile.mkstemp(prefix="flexiexport-tritonserver-", suffix=".log")
    os.close(fd)
    return Path(name)


def work_folder_prefix() -> str:
    return f"flexiexport-serve-{os.getpid()}-"


def remove_stale_work_folders(parent: Path) -> list[Path]:
    """``flexiexport-serve-PID-*`` folders in ``parent`` left by a ``serve`` that no longer runs
    (killed outright: its server went with it, its temporary repository stayed)."""
    from exporter.bundle.write import is_marked_temporary

    removed = []
    for path in parent.glob("flexiexport-serve-*-*"):
        pid = path.name.split("-")[2]
        ours = pid.isdigit() and len(pid) <= 7 and is_marked_temporary(path)  # never a user's look-alike
        if ours and not process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            log.info("removed %s, left by a serve that was killed", path)
    return removed


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def check_port(port: int, option: str) -> int:
    """``port`` when it is free on 127.0.0.1 (0: a free one); ``UsageError`` naming ``option`` otherwise."""
    if not 0 <= port <= 65535:
        raise UsageError(f"{option} must be a port number from 0 to 65535, got {port}")
    if port == 0:
        return free_port()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no conflict
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            raise UsageError(f"{option} {port}: {HOST}:{port} is in use ({exc.strerror}); choose another port") from exc
    return port


def die_with_parent() -> Callable[[], None] | None:
    """Linux: a function for ``preexec_fn`` that has the server sent SIGTERM when the process that
    started it dies (even by SIGKILL). libc is looked up here, before the fork."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class TritonServer:
    """One ``tritonserver`` process on ``repository``, bound to 127.0.0.1: ``start``, ``wait_ready``, ``stop``."""

    def __init__(
        self,
        install: ServerInstall,
        repository: Path,
        workdir: Path,
        http_port: int,
        grpc_port: int,
        exit_on_error: bool = True,
        log_to: IO[str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.install, self.repository, self.workdir = install, repository, workdir
        self.http_port, self.grpc_port = http_port, grpc_port
        self.exit_on_error = exit_on_error
        self.log_path = log_path or workdir / "tritonserver.log"  # outside workdir: it outlives it
        self.log_to = log_to
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    def command(self, backends: Path | None) -> list[str]:
        cmd = [str(self.install.binary), "--model-repository", str(self.repository)]
        cmd += ["--http-address", HOST, "--http-port", str(self.http_port)]
        cmd += ["--grpc-address", HOST, "--grpc-port", str(self.grpc_port)]
        cmd += ["--allow-metrics", "false", "--exit-timeout-secs", "5"]
        cmd += ["--exit-on-error", "true" if self.exit_on_error else "false"]
        return cmd + (["--backend-directory", str(backends)] if backends else [])

    def start(self) -> None:
        backends = prepare_backends(self.install, self.workdir / "backends")
        out: Any = self.log_to if self.log_to is not None else self.log_path.open("wb")
        log.info("starting %s", " ".join(self.command(backends)))
        try:
            self.process = subprocess.Popen(
                self.command(backends),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=server_environment(self.install),
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        except OSError as exc:
            raise EnvironmentMissing(f"cannot start {self.install.binary}: {exc.strerror or exc}") from exc
        finally:
            if self.log_to is None:
                out.close()

    def get(self, path: str, method: str = "GET", timeout: float = 5.0) -> tuple[int, Any]:
        """(HTTP status, parsed JSON body or None) of ``path`` on the server."""
        request = urllib.request.Request(self.http_url + path, data=b"{}" if method == "POST" else None, method=method)
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            return status, None

    def wait_ready(self, timeout: float, live_only: bool = False) -> None:
        """Until ``/v2/health/ready`` (or ``live``) answers 200; ``EnvironmentMissing`` with the
        server's own errors if it exits first or ``timeout`` seconds pass."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        path = "/v2/health/live" if live_only else "/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self.failure(f"tritonserver exited with code {self.process.returncode} before it was ready")
            with contextlib.suppress(OSError):
                if self.get(path, timeout=1.0)[0] == 200:
                    return
            time.sleep(0.2)
        raise self.failure(f"tritonserver was not ready after {timeout:g} s")

    def errors(self) -> list[str]:
        """The server's error lines (``E...`` log lines and load failures), in order."""
        if self.log_to is not None or not self.log_path.is_file():
            return []
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [line for line in lines if (line[:1] == "E" and line[1:5].isdigit()) or line.startswith("error:")]

    def failure(self, what: str) -> UsageError | EnvironmentMissing:
        """Why the server did not come up, from its own words: the models' load failures first."""
        errors = [e for e in self.errors() if "CudaDriverHelper" not in e]  # said on every machine without a GPU
        messages = [e.split("] ", 1)[-1].strip().strip('"').split("\\n", 1)[0] for e in errors]
        loads = [m for m in messages if m.startswith("failed to load")]
        more = f" (and {len(loads) - 1} more models)" if len(loads) > 1 else ""
        text = loads[0] + more if loads else "; ".join(messages[:2])
        detail = (f": {text}" if text else "") + ("" if self.log_to is not None else f" (its log: {self.log_path})")
        if any("address already in use" in e.lower() for e in errors):
            return UsageError(f"{what}: a port is in use{detail}")
        return EnvironmentMissing(f"{what}{detail}")

    def model_index(self) -> list[ModelState]:
        """``/v2/repository/index``: every model's name, state and, when it failed, the reason."""
        status, body = self.get("/v2/repository/index", "POST")
        return body if status == 200 and isinstance(body, list) else []

    def metadata(self) -> ServerMetadata:
        """``/v2``: the server's name, version and extensions ({} when it did not answer)."""
        status, body = self.get("/v2")
        return cast(ServerMetadata, body) if status == 200 and isinstance(body, dict) else {}

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit code (None if never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not stop within %g s: killed", timeout)
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
