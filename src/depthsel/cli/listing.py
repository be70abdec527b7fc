"""Listing commands: ``binners``, ``objectives``, ``models``, ``analyzers``, ``datasets``, ``protocols``, ``plugins``.

Each shows what the installed plugins registered, as a table or, with
``--format json``, as a JSON list on stdout. Listings never fail because one
plugin is broken: the plugin manager isolates failures, and ``plugins`` shows
them with their error.
"""

from __future__ import annotations

from typing import Any

import typer

from .errors import handle_errors
from .output import FormatOption, OutputFormat, emit

__all__ = ["register", "entry_rows", "plugin_rows", "CLI_FAILURES"]

#: Failures the CLI itself met (e.g. a plugin command it could not add), by plugin label.
CLI_FAILURES: dict[str, str] = {}


def entry_rows(kind: str) -> list[dict[str, Any]]:
    """One row per registered entry of ``kind``: name, description, plugin."""
    from ..registry import get_plugin_manager

    rows: list[dict[str, Any]] = []
    if kind == "protocols":  # the core's own preset is no plugin's entry
        from ..protocols import DEFAULT_PROTOCOL

        rows.append({"name": DEFAULT_PROTOCOL.name, "description": DEFAULT_PROTOCOL.description,
                     "plugin": "depthsel (core)"})
    for name, entry in get_plugin_manager().entries(kind).items():
        if kind == "protocols" and name == "default":
            continue  # never used: get_protocol("default") is the core's
        row: dict[str, Any] = {"name": name, "description": entry.description, "plugin": entry.source}
        if kind == "models":
            info = entry.info
            if hasattr(info, "to_dict"):
                row["input_size"] = "x".join(str(s) for s in info.input_size)
                row["suggested_layers"] = list(info.suggested_layers)
                row["info"] = info.to_dict()
        rows.append(row)
    return rows


def plugin_rows() -> list[dict[str, Any]]:
    """One row per plugin seen, loaded or failed, including CLI-level failures."""
    from ..registry import get_plugin_manager

    rows = [status.to_dict() for status in get_plugin_manager().statuses()]
    for row in rows:
        extra = CLI_FAILURES.get(row["name"])
        if extra:
            row["status"] = "failed"
            row["error"] = "; ".join(e for e in (row["error"], extra) if e)
    return rows


def _lister(kind: str, columns: list[str]) -> Any:
    def command(fmt: FormatOption = OutputFormat.table) -> None:
        rows = entry_rows(kind)
        json_rows = [{k: v for k, v in r.items() if k not in ("input_size", "suggested_layers")}
                     for r in rows]
        emit(fmt, rows, columns, title=f"{kind} (depthsel)",
             empty=f"no {kind} registered (run `depthsel plugins`)", json_data=json_rows)

    command.__name__ = f"list_{kind}"
    command.__doc__ = f"List the registered {kind}."
    return command


@handle_errors
def plugins(fmt: FormatOption = OutputFormat.table) -> None:
    """List installed plugins with their version, hooks, source and status."""
    rows = plugin_rows()
    # The table drops the "register_" prefix every hook shares, to leave room for errors.
    table = [{**r, "hooks": [h.removeprefix("register_") for h in r["hooks"]]} for r in rows]
    emit(fmt, table, ["name", "version", "hooks", "source", "status", "error"],
         title="depthsel plugins", empty="no plugins found", json_data=rows)
    if fmt is OutputFormat.table and any(r["status"] == "failed" for r in rows):
        from .output import warn

        warn("some plugins failed and were skipped; everything else still works")


def register(app: typer.Typer) -> None:
    """Add the listing commands to ``app``."""
    for kind, columns in (
        ("binners", ["name", "description", "plugin"]),
        ("objectives", ["name", "description", "plugin"]),
        ("models", ["name", "input_size", "suggested_layers", "description", "plugin"]),
        ("analyzers", ["name", "description", "plugin"]),
        ("datasets", ["name", "description", "plugin"]),
        ("protocols", ["name", "description", "plugin"]),
    ):
        app.command(kind, help=f"List the registered {kind}.")(handle_errors(_lister(kind, columns)))
    app.command("plugins")(plugins)
