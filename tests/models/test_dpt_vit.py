"""``dpt_vit_tiny``: token layers hookable as grids, any multiple-of-16 size, CLI dissect/train/probe.

The zoo contract (metadata, unit counts, parameter count, regulariser gradients,
pickle safety) is checked for it by ``test_zoo_contract.py`` like every model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import depthsel
from depthsel.results import load_result
from depthsel_plugins.models.dpt_vit import STAGES, GridBlock

ENV = {"DEPTHSEL_NO_PROGRESS": "1", "COLUMNS": "120", "NO_COLOR": "1"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_grid_block_equals_a_token_block_folded_back() -> None:
    torch.manual_seed(0)
    blk = GridBlock(8, 2, 2).eval()
    grid = torch.randn(2, 8, 3, 5)
    tokens = grid.flatten(2).transpose(1, 2)
    # Reference: plain attention on the row-major tokens, written out.
    q, k, v = blk.qkv(blk.norm1(tokens)).chunk(3, dim=-1)
    heads = [torch.softmax(qh @ kh.transpose(1, 2) / 2.0, -1) @ vh
             for qh, kh, vh in zip(q.chunk(2, -1), k.chunk(2, -1), v.chunk(2, -1))]
    x = tokens + blk.proj(torch.cat(heads, -1))
    x = x + blk.mlp(blk.norm2(x))
    torch.testing.assert_close(blk(grid), x.transpose(1, 2).reshape(2, 8, 3, 5), atol=1e-5, rtol=1e-5)


def test_stage_outputs_are_unit_grids_at_any_multiple_of_16() -> None:
    torch.manual_seed(0)
    model = depthsel.get_model("dpt_vit_tiny", tiny=True).eval()
    for size in ((32, 48), (64, 96)):
        with torch.no_grad(), depthsel.Capture(model, list(STAGES)) as cap:
            out = model(torch.rand(1, 3, *size))
            shapes = {n: tuple(t.shape) for n, t in cap.outputs.items()}
        assert out.shape == (1, 1, *size) and bool(((out > 0) & (out < 10)).all())
        assert set(shapes.values()) == {(1, 16, size[0] // 16, size[1] // 16)}
    with pytest.raises(ValueError, match="multiples"):
        model(torch.rand(1, 3, 40, 48))


def test_width_scales_the_token_channels() -> None:
    with torch.device("meta"):
        half = depthsel.get_model("dpt_vit_tiny", width=0.5)
    assert half.patch_embed.out_channels == 96 and half.stages[0][0].heads == 3


def _invoke(args: list[str]) -> dict:
    from depthsel.cli import add_plugin_commands, app

    add_plugin_commands(app)  # demo, train, ... are plugin commands

    out = CliRunner(env=ENV).invoke(app, [*args, "--format", "json"])
    assert out.exit_code == 0, (out.stdout, out.stderr)
    return json.loads(out.stdout)


MODEL = ["--model", "dpt_vit_tiny", "--model-config", '{"tiny": true}', "--data", "synthetic"]


def test_cli_dissect_and_probe_hook_token_layers_without_an_adapter(tmp_path: Path) -> None:
    _invoke(["dissect", *MODEL, "--data-set", "size=[32,48]", "--limit", "2", "--layers", "stages.3",
             "--set", "binner=boundary", "--set", "permutations=0", "--out", str(tmp_path / "d")])
    res = load_result(tmp_path / "d")
    assert res.get("stages.3", "R").shape == (16, 3)
    _invoke(["analyze", "probe", *MODEL, "--data-set", "size=[32,48]", "--limit", "4", "--layers",
             "stages.0,stages.3", "--set", "pixels_per_image=100", "--out", str(tmp_path / "p")])
    assert load_result(tmp_path / "p").data["layers"] == ["stages.0", "stages.3"]


def test_cli_train_with_the_selectivity_term_on_a_token_layer(tmp_path: Path) -> None:
    out = _invoke(["train", *MODEL, "--data-set", "num_samples=4", "--data-set", "size=[32,48]",
                   "--layers", "stages.3", "--binner", '{"name": "sid", "num_bins": 16, "min_depth": 0.5}',
                   "--weight", "0.5", "--batch-size", "2", "--epochs", "1", "--out", str(tmp_path),
                   "--name", "vit"])
    assert out["steps"] == 2
    assert (tmp_path / "vit" / "model.safetensors").is_file()


def test_full_size_parameter_count_from_the_architecture() -> None:
    """Count the documented 6,806,161 parameters by hand, layer by layer."""
    d, f, re_ = 192, 64, (24, 48, 96, 192)
    conv = lambda cin, cout, k, bias=True: cin * cout * k * k + (cout if bias else 0)  # noqa: E731
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    encoder = conv(3, d, 16) + d * 15 * 20 + 12 * block
    reassemble = (conv(d, 24, 1) + conv(24, 24, 4) + conv(d, 48, 1) + conv(48, 48, 2) + conv(d, 96, 1)
                  + conv(d, 192, 1) + conv(192, 192, 3))
    project = sum(conv(c, f, 3, bias=False) for c in re_)
    fusion = 4 * (4 * conv(f, f, 3) + conv(f, f, 1))
    head = conv(f, f // 2, 3) + conv(f // 2, 32, 3) + conv(32, 1, 1)
    with torch.device("meta"):
        model = depthsel.get_model("dpt_vit_tiny")
    assert sum(p.numel() for p in model.parameters()) == encoder + reassemble + project + fusion + head == 6_806_161
