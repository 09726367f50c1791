"""The ``semsim`` command: a thin layer over the Python API.

Each module of this package that defines ``register(app: typer.Typer)`` adds its commands; the modules are
found automatically, so a new command is one new file. A :class:`~semsim.errors.SemsimError` is printed as a
one-line ``error: ...`` and exits with status 2.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import warnings

import typer

from semsim.errors import SemsimError

app = typer.Typer(
    name="semsim",
    help="Assess privacy leakage in images reconstructed by attacks on ML models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
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


def main() -> None:
    """Console entry point: one-line errors and warnings (each distinct warning once)."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            app()
        except SemsimError as exc:
            typer.echo(f"error: {exc}", err=True)
            sys.exit(2)
