"""How the CLI turns exceptions into exit codes and one-line messages.

A :class:`~depthsel.DepthselError` is the user's to fix, so it is printed as
one red line on stderr with a hint to set ``DEPTHSEL_DEBUG=1``, and the
process exits with :data:`EXIT_USER_ERROR`. Usage errors (unknown option,
missing argument) stay typer's and exit with :data:`EXIT_USAGE`. Ctrl-C exits
with :data:`EXIT_INTERRUPTED`, the shell convention for SIGINT. Anything else
is a bug and keeps its traceback. With ``DEPTHSEL_DEBUG=1`` every error shows
its full traceback.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from ..errors import DepthselError

__all__ = [
    "CliError",
    "EXIT_OK",
    "EXIT_USER_ERROR",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
    "DEBUG_ENV",
    "debug_enabled",
    "print_error",
    "handle_errors",
]

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
#: Bad input or configuration (a :class:`DepthselError`).
EXIT_USER_ERROR = 1
#: Bad command line, as reported by typer/click.
EXIT_USAGE = 2
#: Interrupted with Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130
DEBUG_ENV = "DEPTHSEL_DEBUG"
_HINT = f"set {DEBUG_ENV}=1 for the traceback"


class CliError(DepthselError):
    """A bad value on the command line that typer cannot check by itself."""


def debug_enabled() -> bool:
    """Whether ``DEPTHSEL_DEBUG`` asks for full tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    # Multi-line messages (torch's, mostly) would break the one-line promise.
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def print_error(exc: BaseException) -> None:
    """Print ``exc`` as one red line on stderr (plus the traceback in debug mode)."""
    from rich.console import Console
    from rich.text import Text

    console = Console(stderr=True, soft_wrap=True, highlight=False)
    if debug_enabled():
        # Plain text: a rich traceback would reflow on narrow terminals.
        sys.stderr.write("".join(traceback.format_exception(exc)))
        sys.stderr.flush()
    line = Text("error: ", style="bold red")
    line.append(_one_line(exc), style="red")
    if not debug_enabled():
        line.append(f" ({_HINT})", style="dim")
    console.print(line)


def handle_errors(func: F) -> F:
    """Wrap a command so known errors become one line and an exit code.

    The wrapper keeps ``func``'s signature and annotations (through
    ``functools.wraps``), which is what typer reads to build the options.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except DepthselError as exc:
            print_error(exc)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except OSError as exc:
            # Missing files, full disks, permissions: the user's to fix, not a bug.
            print_error(exc)
            raise typer.Exit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]
