"""Bad input gives one clear DepthselError subclass whose message names the problem and the fix.

Covers the core engine (depth, activations, layers, bins), the folder dataset
(written into tmp_path), the plugin registry, and the CLI, where each of these
errors is one line on stderr with a non-zero exit code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import depthsel
from depthsel import binning
from depthsel.accumulator import ResponseAccumulator
from depthsel.alignment import binned_sums
from depthsel.binning import EdgesBinner, InvalidDepthWarning
from depthsel.capture import Capture
from depthsel.errors import (
    ActivationShapeError,
    BinCountError,
    DatasetError,
    DepthselError,
    InvalidDepthError,
    LayerNotFoundError,
    ShapeMismatchError,
    UnknownPluginError,
)
from depthsel.layers import LayerSelector
from depthsel.regularizer import SelectivityRegularizer
from depthsel.testing import ToyDepthNet, assert_no_hooks, toy_batch

ROOT = Path(__file__).resolve().parents[2]
EDGES = [0.5, 1.0, 2.0, 4.0, 8.0]


@pytest.fixture
def model() -> ToyDepthNet:
    torch.manual_seed(0)
    return ToyDepthNet(width=4)


# --------------------------------------------------------------------- depth
def test_nan_inf_negative_depth_masked_with_one_warning_and_never_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binning, "_WARNED_NONFINITE", False)
    binner = EdgesBinner(EDGES)
    depth = torch.full((1, 4, 4), 1.5)
    depth[0, 0, :] = torch.tensor([float("nan"), float("inf"), -float("inf"), -1.0])
    with pytest.warns(InvalidDepthWarning, match="NaN, inf or negative"):
        bins = binner(depth)
    assert (bins[0, 0] == -1).all() and (bins[0, 1:] == 1).all()
    # The warning comes once per process, not once per batch.
    with warnings.catch_warnings():
        warnings.simplefilter("error", InvalidDepthWarning)
        binner(depth)
    acc = ResponseAccumulator(binner.num_bins)
    acc.update(torch.ones(1, 3, 4, 4), bins)
    assert acc.counts.tolist() == [0.0, 12.0, 0.0, 0.0]  # 16 pixels, 4 invalid
    assert torch.isfinite(acc.responses()[:, 1]).all()


def test_depth_of_wrong_type_shape_or_dtype() -> None:
    binner = EdgesBinner(EDGES)
    cases: list[tuple[Any, str]] = [
        ([[1.0]], "must be a torch.Tensor"),
        (torch.ones(4, 4), "add a batch dimension"),
        (torch.ones(1, 3, 4, 4), "pass [B, H, W] or [B, 1, H, W]"),
        (torch.ones(1, 4, 4, dtype=torch.int32), "depth.float() / 1000"),
    ]
    for depth, fix in cases:
        with pytest.raises(InvalidDepthError) as info:
            binner(depth)
        assert fix in str(info.value)
    with pytest.raises(InvalidDepthError, match="valid must be a boolean torch.Tensor"):
        binner(torch.ones(1, 4, 4), [[True]])  # type: ignore[arg-type]
    with pytest.raises(InvalidDepthError, match="does not match depth"):
        binner(torch.ones(1, 4, 4), torch.ones(1, 2, 4, 4, dtype=torch.bool))


def test_all_invalid_batch_is_skipped_and_counted() -> None:
    binner = EdgesBinner(EDGES)
    acc = ResponseAccumulator(binner.num_bins)
    acc.update(torch.rand(2, 3, 4, 4), binner(torch.zeros(2, 8, 8)))
    assert acc.skipped_batches == 1 and acc.num_images == 0
    assert float(acc.counts.sum()) == 0.0
    acc.update(torch.rand(1, 3, 4, 4), binner(torch.full((1, 8, 8), 3.0)))
    acc.update(torch.rand(1, 3, 4, 4), binner(torch.full((1, 8, 8), 100.0)))  # beyond the last edge
    assert acc.skipped_batches == 2 and acc.num_images == 1
    r = acc.responses()
    assert torch.isfinite(r[:, 2]).all() and torch.isnan(r[:, [0, 1, 3]]).all()


def test_all_invalid_batch_in_regularizer_gives_zero_loss_not_nan(model: ToyDepthNet) -> None:
    reg = SelectivityRegularizer(model, "dec3", EdgesBinner(EDGES))
    x, _ = toy_batch(2, (16, 16))
    with reg.attach():
        model(x)
        loss = reg.loss(torch.zeros(2, 1, 16, 16))
    assert float(loss) == 0.0 and reg.skipped_batches == 1
    loss.backward()  # no division by zero anywhere in the graph
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


# ------------------------------------------------------------------ batches
def test_activation_and_depth_batch_sizes_differ(model: ToyDepthNet) -> None:
    bins = torch.zeros(3, 8, 8, dtype=torch.long)
    for call in (lambda: ResponseAccumulator(4).update(torch.rand(2, 3, 4, 4), bins),
                 lambda: binned_sums(torch.rand(2, 3, 4, 4), bins, 4)):
        with pytest.raises(ShapeMismatchError, match="pass the depth of the same batch"):
            call()
    reg = SelectivityRegularizer(model, "dec3", EdgesBinner(EDGES))
    x, d = toy_batch(2, (16, 16))
    with reg.attach():
        model(x)
        with pytest.raises(ShapeMismatchError, match="pass the depth of the batch the model just ran on"):
            reg.loss(d[:1])
    with reg.attach():
        model(x)
        with pytest.raises(InvalidDepthError, match="add a batch dimension"):
            reg.loss(d[0, 0])
    assert_no_hooks(model)


def test_bins_out_of_range_and_wrong_weights() -> None:
    act = torch.rand(2, 3, 4, 4)
    for method in ("adjoint", "upsample"):
        with pytest.raises(ShapeMismatchError, match="out of range for 4 bins"):
            binned_sums(act, torch.full((2, 8, 8), 7), 4, method=method)
    with pytest.raises(ShapeMismatchError, match="build them with bin_weight_maps"):
        binned_sums(act, torch.zeros(2, 8, 8, dtype=torch.long), 4, weights=torch.rand(3, 3))
    with pytest.raises(ShapeMismatchError, match="integer tensor"):
        binned_sums(act, torch.zeros(2, 8, 8), 4)


# --------------------------------------------------------------- activations
class TokenNet(nn.Module):
    """Emits [B, N, C] tokens from a Linear layer: not a spatial map."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(2).transpose(1, 2))


def test_activations_not_4d_without_adapter() -> None:
    net = TokenNet()
    with pytest.raises(ActivationShapeError, match="TokenGridAdapter"):
        with Capture(net, "proj"):
            net(torch.rand(1, 3, 4, 4))
    assert_no_hooks(net)
    with pytest.raises(ActivationShapeError, match="register an adapter"):
        ResponseAccumulator(4).update(torch.rand(2, 16, 8), torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ActivationShapeError, match="empty spatial size"):
        ResponseAccumulator(4).update(torch.rand(2, 3, 0, 4), torch.zeros(2, 4, 4, dtype=torch.long))
    # With the adapter the same layer works.
    with Capture(net, "proj", adapters={"proj": depthsel.TokenGridAdapter()}) as cap:
        net(torch.rand(1, 3, 4, 4))
    assert cap.outputs["proj"].shape == (1, 8, 4, 4)


def test_empty_layer_match_lists_closest_names(model: ToyDepthNet) -> None:
    for spec in ("dec9", "decoder.*", nn.LSTM):
        with pytest.raises(LayerNotFoundError) as info:
            LayerSelector(spec).resolve(model)
        assert "depthsel layers" in str(info.value)
    with pytest.raises(LayerNotFoundError, match="closest names: dec3"):
        SelectivityRegularizer(model, "dec33", EdgesBinner(EDGES))
    with pytest.raises(LayerNotFoundError, match="name at least one layer"):
        Capture(model, [])
    assert_no_hooks(model)


def test_more_bins_than_units_under_paper_rule(model: ToyDepthNet) -> None:
    binner = depthsel.get_binner("uniform", num_bins=16, min_depth=0.5, max_depth=10.0)
    reg = SelectivityRegularizer(model, "dec3", binner)  # dec3 has 4 units
    x, d = toy_batch(2, (16, 16))
    with reg.attach():
        model(x)
        with pytest.raises(BinCountError) as info:
            reg.loss(d)
    msg = str(info.value)
    assert "4 units" in msg and "16 bins" in msg and "fit_bins_to_units=True" in msg
    fitted = SelectivityRegularizer(model, "dec3", binner, fit_bins_to_units=True)
    with fitted.attach():
        model(x)
        assert torch.isfinite(fitted.loss(d))
    assert fitted.binner_for("dec3").num_bins == 4
    assert_no_hooks(model)


# ------------------------------------------------------------------ plugins
@pytest.mark.parametrize(("call", "hint"), [
    (lambda: depthsel.get_binner("unifrom"), "did you mean 'uniform'"),
    (lambda: depthsel.get_model("fastdeph"), "did you mean 'fastdepth'"),
    (lambda: depthsel.get_dataset("foldr"), "did you mean 'folder'"),
    (lambda: depthsel.get_analyzer("disection"), "did you mean 'dissection'"),
    (lambda: depthsel.get_objective("asign"), "did you mean 'assign'"),
    (lambda: depthsel.list_plugins("binner"), "did you mean 'binners'"),
])
def test_unknown_plugin_names_suggest(call: Any, hint: str) -> None:
    with pytest.raises(UnknownPluginError) as info:
        call()
    assert hint in str(info.value)


def test_unknown_plugin_option_is_a_depthsel_error(tmp_path: Path) -> None:
    with pytest.raises(DepthselError, match="num_bin"):
        depthsel.get_binner("uniform", num_bin=4)
    # The folder factory takes **config, so the bad name surfaces inside it.
    with pytest.raises(DepthselError, match="rgb_col"):
        depthsel.get_dataset("folder", root=str(tmp_path), rgb_col="x")


# ------------------------------------------------------------------ datasets
def write_pairs(root: Path, n: int = 2, size: tuple[int, int] = (8, 10),
                depth_size: tuple[int, int] | None = None, header: str = "rgb,depth") -> Path:
    from PIL import Image

    (root / "rgb").mkdir(parents=True, exist_ok=True)
    (root / "depth").mkdir(exist_ok=True)
    lines = [header]
    for i in range(n):
        Image.fromarray(np.full((*size, 3), 100, np.uint8)).save(root / f"rgb/{i}.png")
        Image.fromarray(np.full(depth_size or size, 2000, np.uint16)).save(root / f"depth/{i}.png")
        lines.append(f"rgb/{i}.png,depth/{i}.png")
    (root / "index.csv").write_text("\n".join(lines) + "\n")
    return root


def load_first(root: Path, **kw: Any) -> Any:
    return depthsel.get_dataset("folder", root=str(root), **kw)[0]




def test_folder_good_pair_loads(tmp_path: Path) -> None:
    item = load_first(write_pairs(tmp_path))
    assert item["image"].shape == (3, 8, 10) and float(item["depth"].max()) == pytest.approx(2.0)


def test_folder_image_and_depth_of_different_sizes(tmp_path: Path) -> None:
    root = write_pairs(tmp_path, depth_size=(4, 5))
    with pytest.raises(DatasetError, match=r"image is \(8, 10\) but depth is \(4, 5\).*registered"):
        load_first(root)


@pytest.mark.parametrize("mode", ["L", "RGB", "LA"])
def test_folder_depth_png_of_wrong_bit_depth(tmp_path: Path, mode: str) -> None:
    from PIL import Image

    root = write_pairs(tmp_path)
    shape = {"L": (8, 10), "RGB": (8, 10, 3), "LA": (8, 10, 2)}[mode]
    Image.fromarray(np.full(shape, 5, np.uint8), mode=mode).save(root / "depth/0.png")
    with pytest.raises(DatasetError, match=f"mode '{mode}'.*uint16 PNG"):
        load_first(root)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_folder_corrupt_or_truncated_image(tmp_path: Path, damage: str) -> None:
    root = write_pairs(tmp_path)
    target = root / "depth/0.png"
    data = target.read_bytes()
    target.write_bytes({"truncated": data[: len(data) // 2], "empty": b"",
                        "garbage": bytes(range(256)) * 2}[damage])
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        load_first(root)


def test_folder_missing_index_column(tmp_path: Path) -> None:
    root = write_pairs(tmp_path, header="rgb,dpth")
    with pytest.raises(DatasetError, match="no 'depth' column.*pass depth_column="):
        load_first(root)
    os.remove(root / "index.csv")
    with pytest.raises(DatasetError, match="no index file"):
        load_first(root)


def test_folder_file_missing(tmp_path: Path) -> None:
    root = write_pairs(tmp_path)
    os.remove(root / "rgb/1.png")
    ds = depthsel.get_dataset("folder", root=str(root))
    with pytest.raises(DatasetError, match="file not found"):
        ds[1]


# ----------------------------------------------------------------------- CLI
CLI_ENV = {"COLUMNS": "200", "DEPTHSEL_NO_PROGRESS": "1", "DEPTHSEL_DEBUG": "", "NO_COLOR": "1"}


def invoke(args: list[Any]) -> Any:
    from typer.testing import CliRunner

    from depthsel.cli import add_plugin_commands, app


    add_plugin_commands(app)  # demo, train, ... are plugin commands

    return CliRunner(env=CLI_ENV).invoke(app, [str(a) for a in args])


def assert_one_line(result: Any, *needles: str) -> None:
    assert result.exit_code != 0, result.stdout
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    # Exactly one error line, the last one; earlier lines are status messages ("data: ...").
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_cli_unknown_names_one_line(tmp_path: Path) -> None:
    assert_one_line(invoke(["dissect", "--model", "fastdeph", "--data", "synthetic", "--out", tmp_path / "o"]),
                    "did you mean 'fastdepth'")
    assert_one_line(invoke(["analyze", "disection", "--model", "fastdepth", "--data", "synthetic",
                            "--out", tmp_path / "o"]), "did you mean 'dissection'")
    assert_one_line(invoke(["layers", "fastdepth", "--width", "0.25", "--pattern", "zz*"]))
    assert not (tmp_path / "o").exists()


def test_cli_bad_weights_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x80\x02garbage")
    assert_one_line(invoke(["convert", bad, tmp_path / "o.safetensors"]), "bad.pth")
    assert_one_line(invoke(["convert", tmp_path / "nope.pth", tmp_path / "o.safetensors"]), "does not exist")
    assert not (tmp_path / "o.safetensors").exists()


def test_cli_dataset_errors_one_line(tmp_path: Path) -> None:
    from PIL import Image

    root = write_pairs(tmp_path / "ds")
    Image.fromarray(np.full((8, 10), 5, np.uint8)).save(root / "depth/0.png")
    out = tmp_path / "out"
    result = invoke(["dissect", "--model", "fastdepth", "--width", "0.25", "--data", f"folder:{root}",
                     "--out", out, "--set", "permutations=0"])
    assert_one_line(result, "uint16 PNG")
    assert not out.exists() or not any(out.iterdir())
    (root / "index.csv").write_text("rgb,depth\n../../etc/passwd,depth/0.png\n")
    assert_one_line(invoke(["dissect", "--model", "fastdepth", "--width", "0.25", "--data", f"folder:{root}",
                            "--out", out]), "escapes the dataset root")


def test_cli_error_in_real_process_is_one_line_on_stderr(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "depthsel.cli", "convert", str(tmp_path / "missing.pth"),
         str(tmp_path / "o.safetensors")],
        capture_output=True, text=True, timeout=120, cwd=str(ROOT), env={**os.environ, **CLI_ENV},
    )
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "does not exist" in lines[0], proc.stderr


def test_folder_row_with_extra_fields(tmp_path: Path) -> None:
    root = write_pairs(tmp_path)
    (root / "index.csv").write_text("rgb,depth\nrgb/0.png,depth/0.png,extra\n")
    with pytest.raises(DatasetError):
        load_first(root)


def test_folder_nul_byte_in_path(tmp_path: Path) -> None:
    root = write_pairs(tmp_path)
    (root / "index.csv").write_text("rgb,depth\nrgb/0\x00.png,depth/0.png\n")
    with pytest.raises(DatasetError):
        load_first(root)


def test_folder_decompression_bomb_header(tmp_path: Path) -> None:
    import struct
    import zlib

    root = write_pairs(tmp_path)
    data = bytearray((root / "rgb/0.png").read_bytes())
    data[16:24] = struct.pack(">II", 100000, 100000)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    (root / "rgb/0.png").write_bytes(bytes(data))
    with pytest.raises(DatasetError):
        load_first(root)
