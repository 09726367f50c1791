"""The ``semsim`` command: a thin layer over the Python API.

Each module of this package that defines ``register(app: typer.Typer)`` adds its commands; the modules are
found automatically, so a new command is one new file.

Errors (:func:`main`): a :class:`~semsim.errors.SemsimError`, a usage mistake (unknown option, value out of
range) and an operating-system failure on a user's file (permission denied, disk full) print one line
``error: ...`` and exit with status 2. Anything else is a bug: its traceback is shown, followed by a line
asking to report it, and the exit status is 1.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback
import warnings
from typing import Annotated, NoReturn

import typer

import semsim
from semsim.errors import SemsimError

app = typer.Typer(
    name="semsim",
    help="Assess privacy leakage in images reconstructed by attacks on ML models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rendering it with rich costs more than all the commands' imports
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"semsim {semsim.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """Assess privacy leakage in images reconstructed by attacks on ML models."""


def _register_commands() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_commands()


_shown: set[str] = set()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    if str(message) not in _shown:
        _shown.add(str(message))
        typer.echo(f"warning: {message}", err=True)


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {' '.join(message.split())}", err=True)  # one line, whatever the message holds
    sys.exit(2)


def _is_usage_error(exc: Exception) -> bool:
    """A command-line mistake reported by the option parser (click's ClickException, vendored by typer)."""
    return hasattr(exc, "format_message") and hasattr(exc, "exit_code") and hasattr(exc, "show")


def _usage_error(exc: Exception) -> NoReturn:
    if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group command: its help is the answer
        exc.show()  # type: ignore[attr-defined]
        sys.exit(0)
    ctx = getattr(exc, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    _fail(exc.format_message() + where)  # type: ignore[attr-defined]


def _user_error(exc: BaseException) -> str | None:
    """The one-line message for an exception caused by the user's input or machine, None for a bug."""
    if isinstance(exc, OSError):  # a file the user named, a full disk, a read-only folder
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}; check the path, its permissions and the free disk space"
    torch = sys.modules.get("torch")
    if isinstance(exc, MemoryError) or (torch is not None and isinstance(exc, torch.OutOfMemoryError)):
        return "out of memory; use a smaller --batch-size (or a smaller model or image size)"
    return None


def main() -> None:
    """Console entry point: one-line errors and warnings (each distinct warning once); bugs keep their traceback."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            code = app(standalone_mode=False)
        except SemsimError as exc:
            _fail(str(exc))
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - the boundary: every exception ends here
            if _is_usage_error(exc):
                _usage_error(exc)
            message = _user_error(exc)
            if message is not None:
                _fail(message)
            traceback.print_exc()
            typer.echo(f"semsim {semsim.__version__}: this is a bug, not a problem with your input; please report "
                       "it with the command line and the traceback above", err=True)
            sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
