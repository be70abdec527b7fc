"""Loading a result never loads plugins; plugin result classes come only when the caller asks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import depthsel
from depthsel import hookimpl
from depthsel.api import result_types
from depthsel.errors import PluginError, ResultFormatError
from depthsel.results import Result, load_result
from depthsel_plugins.analyses.dissection_result import DissectionResult
from depthsel_plugins.analyses.probe_result import ProbeResult

CHILD = """
import sys
from depthsel import registry
from depthsel.results import Result, load_result

plain = load_result(sys.argv[1])
assert type(plain) is Result, type(plain)
assert torch_ok(plain)
assert "depthsel_plugins" not in sys.modules, "loading a result imported the plugins"
assert registry._DEFAULT is None, "loading a result created the plugin manager"

from depthsel.api import result_types
typed = load_result(sys.argv[1], types=result_types())
print(type(typed).__module__, type(typed).__name__)
"""


def test_loading_a_result_loads_no_plugin_until_asked(tmp_path: Path) -> None:
    saved = DissectionResult(tensors={"responses": torch.arange(6.0)}, data={"units": 3}).save(tmp_path / "r")
    code = "def torch_ok(r):\n    return r.tensors['responses'].tolist() == [0, 1, 2, 3, 4, 5] and r.data == {'units': 3}\n"
    out = subprocess.run([sys.executable, "-c", code + CHILD, str(saved)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["depthsel_plugins.analyses.dissection_result", "DissectionResult"]


def test_types_choose_the_class_and_are_checked(tmp_path: Path) -> None:
    saved = ProbeResult(tensors={"w": torch.ones(2)}, data={}).save(tmp_path / "p")
    assert type(load_result(saved, types=result_types())) is ProbeResult
    assert type(load_result(saved, expected=ProbeResult)) is ProbeResult
    with pytest.raises(ResultFormatError, match="must be a Result subclass with kind 'probe'"):
        load_result(saved, types={"probe": DissectionResult})
    with pytest.raises(ResultFormatError, match="holds a 'probe' result, not 'dissection'"):
        load_result(saved, expected=DissectionResult)
    assert set(result_types()) >= {"dissection", "correction", "ablation", "adversarial", "masks", "probe"}


class _WrongResultType:
    @hookimpl
    def register_results(self, register):
        register("tests_not_a_result", dict)


def test_a_plugin_registering_a_non_result_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEPTHSEL_STRICT_PLUGINS", raising=False)
    label = depthsel.register_plugin(_WrongResultType(), name="tests-wrong-result")
    try:
        with pytest.raises(PluginError, match="tests_not_a_result"):
            result_types()
    finally:
        depthsel.unregister_plugin(label)
    assert issubclass(result_types()["dissection"], Result)
