"""Listing commands, --version, plugin commands, and JSON output."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from cli_support import invoke, invoke_json

from depthsel import hookimpl, register_plugin, unregister_plugin
from depthsel.cli import BUILTIN_COMMANDS, add_plugin_commands, listing


def test_version(runner: Any) -> None:
    from depthsel import __version__

    result = invoke(runner, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"depthsel {__version__}"


def test_help_and_usage_errors(runner: Any) -> None:
    assert invoke(runner, ["--help"]).exit_code == 0
    assert invoke(runner, ["no-such-command"]).exit_code == 2
    assert invoke(runner, ["binners", "--format", "yaml"]).exit_code == 2


def test_binners_json_lists_builtins(runner: Any) -> None:
    rows = invoke_json(runner, ["binners"])
    names = {r["name"]: r for r in rows}
    assert {"uniform", "log", "sid", "quantile"} <= set(names)
    assert names["sid"]["plugin"] == "depthsel:binners"
    assert all(set(r) >= {"name", "description", "plugin"} for r in rows)


def test_every_listing_is_json(runner: Any) -> None:
    for kind in ("objectives", "analyzers", "datasets"):
        rows = invoke_json(runner, [kind])
        assert isinstance(rows, list)
    assert {"assign", "regularize"} <= {r["name"] for r in invoke_json(runner, ["objectives"])}


def test_models_json_has_model_info(runner: Any, toy_plugin: str) -> None:
    rows = {r["name"]: r for r in invoke_json(runner, ["models"])}
    assert rows["toy"]["info"]["input_size"] == [32, 32]
    assert rows["toy"]["info"]["suggested_layers"] == ["dec2", "dec3"]
    assert rows["toy"]["plugin"] == toy_plugin
    table = invoke(runner, ["models"])
    assert table.exit_code == 0 and "toy" in table.stdout


def test_plugins_json_shows_status(runner: Any, toy_plugin: str) -> None:
    rows = {r["name"]: r for r in invoke_json(runner, ["plugins"])}
    assert rows["depthsel:binners"]["status"] == "ok"
    assert rows["depthsel:binners"]["hooks"] == ["register_binners"]
    assert rows["depthsel:binners"]["version"]
    assert set(rows[toy_plugin]["hooks"]) == {"register_models", "register_datasets", "register_analyzers"}
    assert all(set(r) == {"name", "version", "source", "hooks", "status", "error"} for r in rows.values())


def test_failing_inline_plugin_is_reported_and_isolated(runner: Any) -> None:
    class Broken:
        @hookimpl
        def register_binners(self, register: Any) -> None:
            raise RuntimeError("boom in hook")

    with pytest.warns(RuntimeWarning, match="boom in hook"):
        label = register_plugin(Broken(), name="tests-broken-inline")
        try:
            rows = {r["name"]: r for r in invoke_json(runner, ["plugins"])}
            assert rows[label]["status"] == "failed"
            assert "boom in hook" in rows[label]["error"]
            assert "uniform" in {r["name"] for r in invoke_json(runner, ["binners"])}
        finally:
            unregister_plugin(label)


def hello(name: str = typer.Option("world", help="who")) -> None:
    """Say hello (a plugin command)."""
    typer.echo(f"hello {name}")


def bad_signature(x: "NoSuchType") -> None:  # noqa: F821 - unresolvable on purpose
    """Invalid on purpose: typer cannot build this command."""


class CommandPlugin:
    @hookimpl
    def register_commands(self, register: Any) -> None:
        register("tests-hello", hello, description="say hello")
        register("tests-bad", bad_signature, description="broken")
        register("binners", hello, description="clashes with a built-in")


def test_plugin_commands_are_added_and_bad_ones_skipped(runner: Any) -> None:
    from typer.testing import CliRunner

    label = register_plugin(CommandPlugin(), name="tests-command-plugin")
    try:
        target = typer.Typer()
        target.command("binners")(lambda: None)
        with pytest.warns(RuntimeWarning):
            added = add_plugin_commands(target)
        # First-party plugins add commands too (``reproduce``); only the bad ones must be missing.
        assert "tests-hello" in added and not {"tests-bad", "binners"} & set(added)
        assert "binners" in BUILTIN_COMMANDS
        result = CliRunner().invoke(target, ["tests-hello", "--name", "depthsel"])
        assert result.exit_code == 0 and result.stdout.strip() == "hello depthsel"
        rows = {r["name"]: r for r in invoke_json(runner, ["plugins"])}
        assert rows[label]["status"] == "failed"
        assert "tests-bad" in rows[label]["error"] or "binners" in rows[label]["error"]
    finally:
        unregister_plugin(label)
        listing.CLI_FAILURES.pop(label, None)


def test_every_new_application_gets_the_plugin_commands_even_at_a_reused_address() -> None:
    """Idempotence is per application object: a new one at a collected one's address is new."""
    import gc

    import typer

    for _ in range(30):
        target = typer.Typer()
        target.command("probe")(lambda: None)
        assert "demo" in add_plugin_commands(target)
        assert add_plugin_commands(target) == []  # the same application: nothing added twice
        del target
        gc.collect()
