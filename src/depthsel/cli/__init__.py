"""The ``depthsel`` command line.

Built-in commands live in one module each and add themselves to :data:`app`
through a ``register(app)`` function. Plugins add commands through the
``register_commands`` hook; a plugin command that cannot be added is reported
by ``depthsel plugins`` and skipped, never breaking the rest. Training and
experiment commands (``train``, ``demo``, ``sweep``, ``combine``) are such
plugin commands: the core CLI knows no recipe.
"""

from __future__ import annotations

import sys
import weakref
import warnings
from typing import Annotated, Any

import typer

from .. import __version__
from . import analyze, convert, inspect, listing, report
from .errors import EXIT_INTERRUPTED, handle_errors, print_error

__all__ = ["app", "main", "add_plugin_commands", "BUILTIN_COMMANDS"]

app = typer.Typer(
    name="depthsel",
    help="Measure, train and analyse depth selectivity of monocular depth networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help text: at 80 columns or piped, Rich panels cut option names and
    # show a <bool> metavar on flags; plain help wraps the descriptions instead.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"depthsel {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", "-V", callback=_version_callback, is_eager=True,
                       help="Print the depthsel version and exit.")] = False,
) -> None:
    """Measure, train and analyse depth selectivity of monocular depth networks.

    Set DEPTHSEL_DEBUG=1 to see tracebacks, DEPTHSEL_STRICT_PLUGINS=1 to make a
    broken plugin an error, DEPTHSEL_NO_PROGRESS=1 to hide progress bars.
    """


for _module in (listing, inspect, analyze, convert, report):
    _module.register(app)


BUILTIN_COMMANDS: frozenset[str] = frozenset(
    (info.name or getattr(info.callback, "__name__", "")) for info in app.registered_commands
)
# The applications already given the plugin commands. Weak references, not id(): a
# collected application's id can be reused by a new one, which would then get none.
_PLUGIN_COMMANDS_ADDED: "weakref.WeakSet[typer.Typer]" = weakref.WeakSet()


def add_plugin_commands(target: typer.Typer | None = None) -> list[str]:
    """Add commands registered by plugins (``register_commands``) to ``target``.

    Each command is checked by building it on a scratch application first, so
    a bad signature fails here, is recorded for ``depthsel plugins`` and is
    skipped, instead of breaking every command when typer builds the CLI.
    Commands may not shadow built-in ones. Idempotent per application.

    Returns
    -------
    list of str
        Names of the commands added.
    """
    from ..registry import get_plugin_manager

    target = app if target is None else target
    if target in _PLUGIN_COMMANDS_ADDED:
        return []
    _PLUGIN_COMMANDS_ADDED.add(target)
    existing = {info.name for info in target.registered_commands} | set(BUILTIN_COMMANDS)
    added: list[str] = []
    for name, entry in get_plugin_manager().entries("commands").items():
        if name in existing:
            _command_failed(entry.source, f"command {name!r} clashes with a built-in command")
            continue
        func = handle_errors(entry.factory)
        try:
            scratch = typer.Typer()
            scratch.command(name)(func)
            scratch.command("_probe")(lambda: None)  # two commands force a group, like the real app
            typer.main.get_command(scratch)
        except Exception as exc:  # noqa: BLE001 - a plugin's bad signature must stay its own problem
            _command_failed(entry.source, f"command {name!r} is invalid: {type(exc).__name__}: {exc}")
            continue
        target.command(name, help=entry.description or None)(func)
        added.append(name)
    return added


def _command_failed(label: str, error: str) -> None:
    from ..registry import _strict

    if _strict():
        from ..errors import PluginError

        raise PluginError(f"plugin {label!r}: {error} (unset DEPTHSEL_STRICT_PLUGINS to skip it)")
    listing.CLI_FAILURES[label] = error
    warnings.warn(f"depthsel plugin {label!r}: {error}; skipped", RuntimeWarning, stacklevel=3)


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    # One line per warning on stderr, instead of Python's two-line file:line form.
    from .output import warn

    warn(str(message))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: ``depthsel ...``."""
    warnings.showwarning = _show_warning
    try:
        add_plugin_commands(app)
    except Exception as exc:  # noqa: BLE001 - strict mode, or a bug: report it in one line
        from ..errors import DepthselError

        if not isinstance(exc, DepthselError):
            raise
        print_error(exc)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    app(args=argv, prog_name="depthsel")
