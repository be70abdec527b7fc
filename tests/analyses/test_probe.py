"""The ``probe`` analyzer: streamed ridge statistics against plain least squares, and behaviour."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from typer.testing import CliRunner

import depthsel
from depthsel.analysis import AnalysisContext
from depthsel.results import load_result
from depthsel.modelinfo import ModelInfo
from depthsel_plugins.analyses.probe import ProbeAnalyzer, ProbeResult, plot_probe_curves
from depthsel_plugins.analyses.probe_stats import ProbeStatistics

INFO = ModelInfo(input_size=(12, 16), normalization="unit", suggested_layers=("carry", "noise", "pooled"))


def _concat(acts: list[torch.Tensor], depths: list[torch.Tensor], align_corners: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
    """Reference design matrix: every valid pixel of every upsampled map, concatenated."""
    xs, ys = [], []
    for a, d in zip(acts, depths):
        up = F.interpolate(a.double(), size=d.shape[-2:], mode="bilinear", align_corners=align_corners)
        m = d > 0
        xs.append(up.permute(0, 2, 3, 1)[m].numpy())
        ys.append(d[m].double().numpy())
    return np.concatenate(xs), np.concatenate(ys)


def _stream(acts: list[torch.Tensor], depths: list[torch.Tensor], **kw: Any) -> ProbeStatistics:
    s = ProbeStatistics(**kw)
    for a, d in zip(acts, depths):
        s.update(a, d)
    return s


def _random_batches(seed: int, k: int, n_batches: int, hw: tuple[int, int], size: tuple[int, int]
                    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    acts, depths = [], []
    for i in range(n_batches):
        b = 1 + i % 3
        acts.append(torch.randn(b, k, *hw, generator=g) * torch.rand(k, 1, 1, generator=g) * 3 + 1)
        d = 0.5 + 9 * torch.rand(b, *size, generator=g, dtype=torch.float64)
        d[torch.rand(b, *size, generator=g) < 0.2] = 0.0  # invalid pixels never count
        depths.append(d)
    return acts, depths


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 6), up=st.sampled_from([1, 2, 3]),
       align=st.booleans(), block=st.sampled_from([1, 37, 1 << 23]))
def test_ols_equals_numpy_lstsq_on_concatenated_activations(seed: int, k: int, up: int, align: bool,
                                                            block: int) -> None:
    acts, depths = _random_batches(seed, k, 3, (4, 5), (4 * up, 5 * up))
    stats = _stream(acts, depths, align_corners=align, block_elements=block)
    fit = stats.solve(ridge=0.0)
    x, y = _concat(acts, depths, align)
    design = np.concatenate([x, np.ones((x.shape[0], 1))], 1)
    ref = np.linalg.lstsq(design, y, rcond=None)[0]
    np.testing.assert_allclose(fit.weight.numpy(), ref[:-1], rtol=1e-7, atol=1e-9)
    assert fit.bias == pytest.approx(ref[-1], rel=1e-7, abs=1e-9)
    assert float(stats.n) == x.shape[0]


def test_ridge_equals_standardised_ridge_on_concatenated_data() -> None:
    acts, depths = _random_batches(7, 5, 4, (3, 4), (6, 8))
    lam = 0.3
    fit = _stream(acts, depths).solve(ridge=lam)
    x, y = _concat(acts, depths)
    mu, sd = x.mean(0), x.std(0)
    z = (x - mu) / sd
    ws = np.linalg.solve(z.T @ z / len(y) + lam * np.eye(x.shape[1]), z.T @ (y - y.mean()) / len(y))
    np.testing.assert_allclose(fit.weight.numpy(), ws / sd, rtol=1e-9)
    assert fit.bias == pytest.approx(y.mean() - mu @ (ws / sd), rel=1e-9)
    # The penalty really shrinks: the OLS weights are larger in the standardised norm.
    ols = _stream(acts, depths).solve(ridge=0.0)
    assert float(((ols.weight.numpy() * sd) ** 2).sum()) > float((ws ** 2).sum())


def test_merge_and_flat_roundtrip_equal_one_stream() -> None:
    acts, depths = _random_batches(3, 4, 4, (4, 4), (8, 8))
    whole = _stream(acts, depths)
    a, b = _stream(acts[:2], depths[:2]), _stream(acts[2:], depths[2:])
    a.merge(b)
    torch.testing.assert_close(a.flat(), whole.flat(), rtol=1e-12, atol=1e-12)
    c = _stream(acts[:1], depths[:1])
    c.set_flat(whole.flat())
    torch.testing.assert_close(c.solve(0.0).weight, whole.solve(0.0).weight)


def test_dead_units_get_zero_weight_and_log_target_fits_log_depth() -> None:
    g = torch.Generator().manual_seed(0)
    d = 0.5 + 9 * torch.rand(2, 6, 6, generator=g, dtype=torch.float64)
    act = torch.stack([d.log(), torch.zeros_like(d), torch.randn(d.shape, generator=g, dtype=torch.float64)], 1)
    fit = _stream([act], [d], target="log").solve(ridge=0.0)
    assert float(fit.weight[1]) == 0.0
    assert float(fit.weight[0]) == pytest.approx(1.0, abs=1e-9)


# ------------------------------------------------------------ the analyzer
class _Scenes(torch.utils.data.Dataset):
    """Depth fields whose image channel 0 is depth / 10 exactly; channels 1-2 are noise."""

    def __init__(self, n: int = 8, size: tuple[int, int] = (12, 16), seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        h, w = size
        yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        self.items = []
        for i in range(n):
            a, b, c = (torch.rand(3, generator=g) * 2 - 1).tolist()
            depth = (5 + 3 * a * xx + 2 * b * yy + c * torch.sin(6 * xx + i)).clamp(0.6, 9.5)
            depth[torch.rand(size, generator=g) < 0.1] = 0.0
            image = torch.stack([depth / 10, torch.rand(size, generator=g), torch.rand(size, generator=g)])
            self.items.append({"image": image, "depth": depth[None], "valid": depth[None] > 0, "name": f"s{i}"})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


class _Net(nn.Module):
    """``carry`` is linear in depth; ``noise`` sees only the noise channels; ``pooled`` is half-size."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.carry = nn.Conv2d(3, 4, 1)
        self.noise = nn.Conv2d(3, 6, 1)
        self.mix = nn.Conv2d(3, 6, 1)
        self.pooled = nn.AvgPool2d(2)
        with torch.no_grad():
            self.carry.weight.copy_(torch.randn(4, 3, 1, 1, generator=g))
            self.noise.weight.copy_(torch.randn(6, 3, 1, 1, generator=g))
            self.noise.weight[:, 0] = 0.0  # blind to the depth channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.noise(x)
        # tanh makes the pooled features full rank (a linear mix of 3 channels is rank 3).
        p = self.pooled(torch.tanh(self.mix(x)))
        return self.carry(x)[:, :1] + n[:, :1] + F.interpolate(p[:, :1], scale_factor=2.0)


def _ctx(**kw: Any) -> AnalysisContext:
    torch.manual_seed(0)
    return AnalysisContext(model=_Net(), dataset=_Scenes(), info=INFO, progress=False, **kw)


def test_a_layer_carrying_depth_probes_perfectly_and_a_blind_one_does_not() -> None:
    res = ProbeAnalyzer(ridge=0.0).run(_ctx(layers=["carry", "noise"]))
    carry, noise, const = res.data["metrics"]["carry"], res.data["metrics"]["noise"], res.data["constant"]
    assert carry["r2"] > 0.999999 and carry["rmse"] < 1e-5 and carry["delta1"] == 1.0
    assert noise["r2"] < 0.05 and noise["rmse"] > 0.9 * const["rmse"]
    assert carry["test_pixels"] == noise["test_pixels"] > 0
    # Per-bin errors: tiny everywhere for the carrying layer, and counted on held-out pixels only.
    populated = res.tensors["bin_counts"] > 0
    assert float(res.tensors["bin_counts"].sum()) == carry["test_pixels"]
    assert float(res.tensors["carry/bin_rmse"][populated].max()) < 1e-5
    assert float(res.tensors["noise/bin_rmse"][populated].max()) > 0.1


def test_analyzer_weights_equal_lstsq_on_the_captured_training_activations() -> None:
    ctx = _ctx(layers=["pooled"], batch_size=3)
    res = ProbeAnalyzer(ridge=0.0, train_fraction=0.5).run(ctx)
    model, data = ctx.model, _Scenes()
    acts, depths = [], []
    with torch.no_grad(), depthsel.Capture(model, ["pooled"]) as cap:
        for i in range(4):  # the leading half is the training split
            model(data[i]["image"][None])
            acts.append(cap.outputs["pooled"].clone())
            depths.append(data[i]["depth"].double())
    x, y = _concat(acts, depths)
    ref = np.linalg.lstsq(np.concatenate([x, np.ones((len(y), 1))], 1), y, rcond=None)[0]
    np.testing.assert_allclose(res.tensors["pooled/weight"].numpy(), ref[:-1], rtol=1e-6, atol=1e-8)
    assert float(res.tensors["pooled/bias"][0]) == pytest.approx(ref[-1], rel=1e-6, abs=1e-8)
    assert res.data["metrics"]["pooled"]["train_pixels"] == len(y)


def test_pixel_subsampling_keeps_at_most_k_pixels_per_image() -> None:
    res = ProbeAnalyzer(pixels_per_image=10).run(_ctx(layers=["carry"]))
    assert res.data["metrics"]["carry"]["train_pixels"] == 4 * 10
    assert res.data["metrics"]["carry"]["r2"] > 0.9999  # still a perfect linear code


def test_save_load_plot_and_compare(tmp_path: Path) -> None:
    base = ProbeAnalyzer(label="baseline").run(_ctx(layers=["carry", "noise"]))
    base.save(tmp_path / "base")
    other = ProbeAnalyzer(label="other", compare=str(tmp_path / "base")).run(_ctx(layers=["carry", "noise"]))
    other.save(tmp_path / "other")
    back = load_result(tmp_path / "other")
    assert isinstance(back, ProbeResult) and back.data["compare"]["label"] == "baseline"
    assert back.curve("r2") == other.curve("r2")
    assert [r["layer"] for r in back.rows()] == ["carry", "noise", "(constant)"]
    assert len(back.bin_rows("carry")) == 10
    png = back.save_figures(tmp_path / "figs")[0]
    assert png.name == "probe_by_layer.png" and png.stat().st_size > 1000
    assert plot_probe_curves([base, tmp_path / "other"], tmp_path / "two.png").is_file()


def test_train_split_from_a_dataset_config() -> None:
    res = ProbeAnalyzer(train={"name": "synthetic", "num_samples": 2, "size": [16, 16]}).run(_ctx(layers=["carry"]))
    # Fitted on 2 synthetic images, scored on all 8 scenes (nothing held back from ctx.dataset).
    assert res.data["metrics"]["carry"]["train_pixels"] <= 2 * 16 * 16
    assert res.data["metrics"]["carry"]["test_pixels"] == float(sum((s["depth"] > 0).sum() for s in _Scenes().items))
    with pytest.raises(depthsel.DepthselError, match="name"):
        ProbeAnalyzer(train={"root": "x"}).run(_ctx(layers=["carry"]))


def test_per_concept_error_and_a_bad_compare_path_fails_before_any_pass(tmp_path: Path) -> None:
    res = ProbeAnalyzer(binner="boundary").run(_ctx(layers=["carry"]))
    assert res.tensors["bin_counts"].shape == (3,) and len(res.bin_rows("carry")) == 3
    assert float(res.tensors["bin_counts"].sum()) > 0
    ctx = _ctx(layers=["carry"])
    calls = []
    ctx.model.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(depthsel.DepthselError, match="compare"):
        ProbeAnalyzer(compare=str(tmp_path / "missing")).run(ctx)
    assert not calls


@pytest.mark.parametrize("cfg, needle", [({"ridge": -1}, "ridge"), ({"target": "inv"}, "target"),
                                         ({"train_fraction": 1.0}, "train_fraction"),
                                         ({"protocol": "nope"}, "protocol")])
def test_bad_config_is_one_clear_error(cfg: dict[str, Any], needle: str) -> None:
    with pytest.raises(depthsel.DepthselError, match=needle):
        ProbeAnalyzer(**cfg)


def test_cli_runs_the_probe_on_a_registered_model(tmp_path: Path) -> None:
    from depthsel.cli import add_plugin_commands, app

    add_plugin_commands(app)  # demo, train, ... are plugin commands

    runner = CliRunner(env={"DEPTHSEL_NO_PROGRESS": "1", "COLUMNS": "120", "NO_COLOR": "1"})
    args = ["analyze", "probe", "--model", "fastdepth", "--model-config", '{"tiny": true}',
            "--data", "synthetic", "--data-set", "size=[32,32]", "--limit", "4", "--layers",
            "decode_conv4,decode_conv5", "--set", "pixels_per_image=200", "--out", str(tmp_path / "p"),
            "--format", "json"]
    out = runner.invoke(app, args)
    assert out.exit_code == 0, (out.stdout, out.stderr)
    summary = json.loads(out.stdout)["summary"]
    assert summary["kind"] == "probe" and "decode_conv5" in summary
    res = load_result(tmp_path / "p")
    m = res.data["metrics"]["decode_conv5"]
    assert m["train_pixels"] == 2 * 200 and math.isfinite(m["rmse"])


@settings(max_examples=20, deadline=None)
@given(k=st.integers(1, 5), h=st.integers(1, 6), w=st.integers(1, 6), big=st.tuples(st.integers(1, 13),
       st.integers(1, 13)), align=st.booleans(), budget=st.integers(1, 200))
def test_row_streamed_alignment_equals_plain_bilinear(k: int, h: int, w: int, big: tuple[int, int],
                                                      align: bool, budget: int) -> None:
    from depthsel_plugins.analyses.probe_stats import aligned_features, aligned_rows

    act = torch.randn(1, k, h, w, generator=torch.Generator().manual_seed(k * 100 + h * 10 + w))
    plain = aligned_features(act, big, align)[0]
    blocks = list(aligned_rows(act[0], big, align, max_elements=budget))
    assert blocks[0][0] == 0 and blocks[-1][1] == big[0]
    torch.testing.assert_close(torch.cat([b for _, _, b in blocks]), plain, rtol=1e-12, atol=1e-12)
    # The probe's prediction (channels mixed first) equals the plain path too.
    from depthsel_plugins.analyses.probe_stats import ProbeFit

    wts = torch.randn(k, dtype=torch.float64)
    torch.testing.assert_close(ProbeFit(wts, 0.5).predict(act, big, align)[0], plain @ wts + 0.5)
