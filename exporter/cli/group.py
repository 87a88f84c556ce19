"""The command group: logging, signals, and the one place that turns exceptions into exit codes
and one-line errors (0 ok, 1 internal, 2 bad input, 3 validation failed, 4 environment)."""

from __future__ import annotations

import errno
import logging
import signal
from collections.abc import Callable
from typing import Any, NoReturn

import click

from exporter import __version__
from exporter.core.errors import (
    DiskFullError,
    FlexiExportError,
    full_disk_cause,
)
from exporter.core.names import printable
from exporter.core.progress import interrupt


def debug_option(func: Any) -> Any:
    return click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")(func)


class FlexiGroup(click.Group):
    """The command group; the one place that turns exceptions into exit codes and one-line errors."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["flexiexport.debug"] = "--debug" in args
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        debug = ctx.meta.get("flexiexport.debug", False)
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            command = f"flexiexport {exc.ctx.info_name}" if exc.ctx and exc.ctx.parent else "flexiexport"
            fail(ctx, f"{exc.format_message()} (see '{command} --help')", exc.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt as exc:
            ignore_further_interrupts()  # the clean-up ran; exit with the code and message below
            name = str(exc.args[0]) if exc.args and str(exc.args[0]).startswith("SIG") else "SIGINT"
            code = 128 + int(getattr(signal.Signals, name, signal.SIGINT))
            fail(ctx, f"interrupted ({name}); nothing was written (an existing bundle is as it was)", code)
        except DiskFullError as exc:
            if debug:
                raise
            fail(ctx, disk_full_text(ctx, exc), exc.exit_code)
        except FlexiExportError as exc:
            word = flag_wording(ctx)
            if debug:
                exc.args = (exc.worded(word),)  # the traceback ends with the message as the CLI words it
                raise
            lines = exc.worded_lines(word)  # ImageErrors: a line per file
            for line in lines[:-1]:
                click.echo(f"error: {printable(line)}", err=True)
            fail(ctx, lines[-1], exc.exit_code)
        except Exception as exc:
            if debug:
                raise
            full = full_disk_cause(exc)  # a write site we do not wrap (onnx.save, a library's own file)
            if full is not None:
                # a copy's (shutil's sendfile) or a rename's second path is the one being written
                fail(ctx, disk_full_text(ctx, DiskFullError(full.filename2 or full.filename or "the output")), 2)
            if isinstance(exc, OSError) and exc.filename and exc.errno in PATH_ERRNOS:
                fail(ctx, f"cannot use {str(exc.filename)!r}: {exc.strerror}", 2)  # a path the user gave
            fail(ctx, f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1)


# How an error's library parameters are worded as flags (exporter.core.errors): by the Click
# option of that name (its first flag), except where these tables say otherwise.
# Parameters no command has an option of that name for (the library names them otherwise):
FLAGS = {
    "labels": "--labels",  # BuildOptions.labels; the option's name is labels_file
    "img_range": "--img-size",  # BuildOptions.img_range, from --img-size dynamic:MIN-MAX
    "min_runs": "--runs",  # BenchOptions.min_runs
    "explicit": "--tritonserver",  # find_tritonserver(explicit); the option's name is binary
}
# A command whose messages word an option by another of its flags: resize keeps the seed
# converter's short ones.
COMMAND_FLAGS = {
    "resize": {"patch": "-ps", "dst": "-o"},
}


def flag_wording(ctx: click.Context) -> Callable[[str], str]:
    """How the running command words a library parameter named in an error: as the flag
    ``COMMAND_FLAGS`` gives it, else its own option's, else the flag in ``FLAGS``, else another
    command's (advice such as "build it with --calib-dir" that ``engine`` gives), else as the
    name itself."""
    group = ctx.command
    name = ctx.invoked_subcommand or ""
    flags: dict[str, str] = {}
    if isinstance(group, click.Group):
        for command in group.commands.values():
            flags |= option_flags(command)
        flags |= FLAGS
        if name in group.commands:
            flags |= option_flags(group.commands[name])
    flags |= COMMAND_FLAGS.get(name, {})
    return lambda param: flags.get(param, param)


def option_flags(command: click.Command) -> dict[str, str]:
    """Each of ``command``'s options by its parameter name: its first flag."""
    return {p.name: p.opts[0] for p in command.params if isinstance(p, click.Option) and p.name}


# An OSError about a path a command was given (too long, a loop of links, not a folder, no
# permission, gone) is bad input, exit 2, not an internal error.
PATH_ERRNOS = {
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.EROFS,
}


OUTPUT_OPTIONS = {"build": "--out", "triton": "--out", "resize": "-o"}


def disk_full_text(ctx: click.Context, exc: DiskFullError) -> str:
    """The error plus what to do; the option to suggest depends on the command."""
    option = OUTPUT_OPTIONS.get(ctx.invoked_subcommand or "")
    return f"{exc} (free some space{f' or choose another {option}' if option else ''})"


def fail(ctx: click.Context, message: str, code: int) -> NoReturn:
    click.echo(f"error: {printable(message)}", err=True)
    ctx.exit(code)
    raise AssertionError("unreachable")  # ctx.exit raises


@click.group(cls=FlexiGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="flexiexport")
@debug_option
def cli(debug: bool) -> None:
    """Turn one FlexiViT (or any timm ViT) checkpoint into validated models, one per patch size.

    \b
    Start here:   flexiexport build --patch-sizes 8 16 32
    Then:         flexiexport inspect bundles/flexivit-demo
    """
    _setup_logging(debug)


class PrintableFormatter(logging.Formatter):
    """Log lines can quote names from a checkpoint or a bundle: no control characters reach the
    terminal, and a record is one line (a ``--debug`` traceback after it keeps its own lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.INFO and record.name in PROGRESS_LOGGERS:
            return printable(record.message)  # a progress line, not a warning to act on
        return printable(super().formatMessage(record))


# Loggers whose INFO lines are progress a user waits on (the latency probe before a budget
# choice): printed on stderr as plain lines; everything else speaks only from WARNING up.
PROGRESS_LOGGERS = ("exporter.runtime.budget",)


def _setup_logging(debug: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(PrintableFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, handlers=[handler])
    for name in PROGRESS_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.INFO)


def ignore_further_interrupts() -> None:
    """Once an interrupt has been handled, later signals would only cut the exit short (a
    KeyboardInterrupt escaping at shutdown makes Python kill itself with SIGINT). Only where
    ``main`` installed our handlers: an embedding program keeps its own."""
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is interrupt:
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_IGN)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP (docker stop, CI time-outs, ``timeout``, a closed terminal) behave like
    Ctrl-C: the staging folder is removed and the old bundle stays. All three are remembered, so
    an interrupt that a library's clean-up code swallows is raised again at the next stage."""

    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), interrupt)
