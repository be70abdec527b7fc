"""Shared fixtures of the CLI tests: a CliRunner, an inline toy plugin, subprocess helpers."""

from __future__ import annotations

from functools import partial

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from depthsel import hookimpl, register_plugin, unregister_plugin
from depthsel.consumer import BatchCallback
from depthsel.analysis import AnalysisContext, Analyzer
from depthsel.results import Result
from depthsel.testing import ToyDepthDataset, ToyDepthNet
from depthsel.modelinfo import ModelInfo

ROOT = Path(__file__).resolve().parents[2]
CLI_ENV = {"COLUMNS": "120", "DEPTHSEL_NO_PROGRESS": "1", "DEPTHSEL_DEBUG": "", "NO_COLOR": "1"}


class MeanResult(Result):
    kind = "tests.toy-mean"


class ToyMeanAnalyzer(Analyzer):
    """Mean activation per layer (the smallest useful analyzer)."""

    name = "toy-mean"

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__(scale=scale)
        self.scale = scale

    def run(self, ctx: AnalysisContext) -> MeanResult:
        means: dict[str, float] = {}

        def add(view: Any) -> None:
            for name, act in view.activations.items():
                means[name] = means.get(name, 0.0) + float(act.mean()) * self.scale

        ctx.stream({"mean": BatchCallback(add)}, progress=False)
        return MeanResult(tensors={"dummy": torch.zeros(2)},
                          data={"layers": means, "images": len(ctx.dataset)}, config=self.config())


def toy_model(width: float = 8) -> ToyDepthNet:
    """Factory accepting a float --width (the CLI passes floats)."""
    return ToyDepthNet(width=int(width))


class ToyPlugin:
    @hookimpl
    def register_models(self, register: Any) -> None:
        register("toy", toy_model, description="ToyDepthNet (tests)",
                 info=ModelInfo(input_size=(32, 32), normalization="unit",
                                suggested_layers=("dec2", "dec3"), layer_units={"dec2": 16, "dec3": 8}))

    @hookimpl
    def register_datasets(self, register: Any) -> None:
        register("toyset", partial(ToyDepthDataset, num_samples=4, seed=1), description="toy_batch samples (tests)")

    @hookimpl
    def register_analyzers(self, register: Any) -> None:
        register("toy-mean", ToyMeanAnalyzer, description="mean activation (tests)")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env=CLI_ENV)


@pytest.fixture
def toy_plugin() -> Iterator[str]:
    label = register_plugin(ToyPlugin(), name="tests-toy-plugin")
    try:
        yield label
    finally:
        unregister_plugin(label)


def invoke(runner: CliRunner, args: list[str], **kwargs: Any) -> Any:
    from depthsel.cli import add_plugin_commands, app

    add_plugin_commands(app)  # demo, train, ... are plugin commands

    return runner.invoke(app, [str(a) for a in args], **kwargs)


def invoke_json(runner: CliRunner, args: list[str]) -> Any:
    result = invoke(runner, [*args, "--format", "json"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def assert_one_line_error(result: Any, *needles: str) -> None:
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr, result.exception)
    err = result.stderr.strip()
    assert err.startswith("error: "), err
    assert "\n" not in err, err
    assert "DEPTHSEL_DEBUG=1" in err
    for needle in needles:
        assert needle in err, err


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -m depthsel.cli ARGS`` in a fresh process."""
    full_env = {**os.environ, **CLI_ENV, **(env or {})}
    return subprocess.run([sys.executable, "-m", "depthsel.cli", *map(str, args)], env=full_env,
                          capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
