"""Tests of the ``dissection`` analyzer, its result, permutation test and plots.

The reference preset is checked against a plain loop transcribed from the
published ``dissect.py`` math (upsample, signed sum per bin, divide, abs,
argmax, absent bins as zeros), written here without any depthsel code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from datahelpers import shared_data_dir

from depthsel import EdgesBinner, ModelInfo, get_analyzer, get_binner, get_dataset
from depthsel.analysis import AnalysisContext
from depthsel.errors import DepthselError
from depthsel.results import load_result
from depthsel.testing import ToyDepthNet, toy_batch
from depthsel_plugins.analyses.dissection import DissectionAnalyzer, DissectionResult, dissect_splits
from depthsel_plugins.analyses.dissection_plots import plot_feature_maps

UNIT = ModelInfo(input_size=(32, 32), normalization="unit", suggested_layers=("dec2", "dec3"))


class TensorDataset(Dataset[dict[str, Any]]):
    """Items per the depthsel contract from image/depth tensors."""

    def __init__(self, image: torch.Tensor, depth: torch.Tensor) -> None:
        self.image, self.depth = image, depth

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        d = self.depth[i]
        return {"image": self.image[i], "depth": d, "valid": d > 0, "name": f"s{i}"}


def toy_dataset(n: int = 6, seed: int = 0, size: tuple[int, int] = (32, 32)) -> TensorDataset:
    return TensorDataset(*toy_batch(n, size, seed=seed))


def toy_model() -> ToyDepthNet:
    torch.manual_seed(0)
    return ToyDepthNet(width=8).eval()


def nyu_dataset(size: tuple[int, int] = (48, 64)) -> Dataset[Any]:
    """The real NYU mini test set at a tiny size (skips when the data is absent, fails on CI)."""
    return get_dataset("folder", root=str(shared_data_dir("nyu2_mini_test")), size=size)


def run(model: nn.Module, ds: Dataset[Any], layers: list[str], **config: Any) -> DissectionResult:
    ctx = AnalysisContext(model=model, dataset=ds, info=UNIT, layers=layers, batch_size=4, progress=False)
    res = DissectionAnalyzer(**config).run(ctx)
    assert isinstance(res, DissectionResult)
    return res


# ---------------------------------------------------------------- reference math
def handwritten_reference(model: nn.Module, ds: TensorDataset, layer: str,
                          edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The published dissect.py math as a plain loop: returns (R, argmax, DS)."""
    nb = edges.numel() - 1
    sums: torch.Tensor | None = None
    counts = torch.zeros(nb, dtype=torch.float64)
    module = dict(model.named_modules())[layer]
    for i in range(len(ds)):
        item = ds[i]
        store: list[torch.Tensor] = []
        h = module.register_forward_hook(lambda _m, _i, o: store.append(o.detach()))
        with torch.no_grad():
            model(item["image"][None])
        h.remove()
        up = F.interpolate(store[0].double(), size=item["depth"].shape[-2:], mode="bilinear",
                           align_corners=False)[0]
        if sums is None:
            sums = torch.zeros(up.shape[0], nb, dtype=torch.float64)
        depth = item["depth"][0].double()
        for d in range(nb):
            mask = (depth > edges[d]) & (depth <= edges[d + 1])
            sums[:, d] += up[:, mask].sum(1)
            counts[d] += mask.sum()
    assert sums is not None
    r = torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums)).abs()
    amax = r.argmax(1)
    ds_out = torch.empty(r.shape[0], dtype=torch.float64)
    for k in range(r.shape[0]):
        top = r[k, amax[k]]
        others = (r[k].sum() - top) / (nb - 1)
        ds_out[k] = (top - others) / (top + others)
    return r, amax, ds_out


# Uniform bins to 20 m over data that stops at 10 m: half the bins are never seen.
BINNER = {"name": "uniform", "num_bins": 16, "min_depth": 0.0, "max_depth": 20.0}


def test_reference_preset_equals_handwritten_dissect_math() -> None:
    model, ds = toy_model(), toy_dataset()
    # dec2.0 is a conv: signed activations, so signed-mean-then-abs matters.
    # dec3 has 8 units on 16 bins: the bins are kept (fit_bins_to_units=False), so the assignment
    # must be explicit (Eq. 6 would put the 8 units on bins 0..7 only).
    spread = list(range(0, 16, 2))
    res = run(model, ds, ["dec2.0", "dec3"], binner=BINNER, preset="reference", permutations=0,
              fit_bins_to_units=False, assignment={"dec2.0": list(range(16)), "dec3": spread})
    edges = get_binner("uniform", num_bins=16, min_depth=0.0, max_depth=20.0).edges
    for layer in ("dec2.0", "dec3"):
        r, amax, ds_ref = handwritten_reference(model, ds, layer, edges)
        # float32 batched vs single-image forwards differ in the last bits.
        torch.testing.assert_close(res.get(layer, "R"), r, rtol=1e-5, atol=1e-7)
        assert torch.equal(res.get(layer, "argmax_bin"), amax)
        torch.testing.assert_close(res.get(layer, "ds"), ds_ref, rtol=1e-5, atol=1e-7)
        assert res.summary_for(layer).argmax_ds == pytest.approx(float(ds_ref.mean()), rel=1e-5)


def test_default_preset_differs_as_documented() -> None:
    model, ds = toy_model(), toy_dataset()
    ref = run(model, ds, ["dec2.0"], binner=BINNER, preset="reference", permutations=0)
    dflt = run(model, ds, ["dec2.0"], binner=BINNER, preset="default", permutations=0)
    r_abs, r_signed = dflt.get("dec2.0", "R_abs"), dflt.get("dec2.0", "R_signed")
    seen = ~torch.isnan(r_abs[0])
    assert 0 < int(seen.sum()) < 16  # the setting has absent bins
    # Default scores mean |A|, which is >= |mean A| and differs for signed units.
    assert bool((r_abs[:, seen] >= r_signed[:, seen].abs() - 1e-12).all())
    assert float((r_abs[:, seen] - r_signed[:, seen].abs()).max()) > 1e-3
    # Default DS by hand: mean |A|, argmax, others over the SEEN bins only.
    r = r_abs[:, seen]
    top = r.max(1).values
    others = (r.sum(1) - top) / (r.shape[1] - 1)
    torch.testing.assert_close(dflt.get("dec2.0", "ds"), (top - others) / (top + others))
    # Counting absent bins as zeros inflates DS: the reference DS exceeds the same
    # responses scored with absent bins excluded, unit by unit.
    rs = r_signed[:, seen].abs()
    top_s = rs.max(1).values
    other_s = (rs.sum(1) - top_s) / (rs.shape[1] - 1)
    excl = (top_s - other_s) / (top_s + other_s)
    assert bool((ref.get("dec2.0", "ds") > excl).all())
    assert ref.summary_for("dec2.0").argmax_ds > dflt.summary_for("dec2.0").argmax_ds


# ------------------------------------------------------------- permutation test
class NoiseAndDepth(nn.Module):
    """Unit 0 responds to 3 m depth (encoded in image channel 0); the others are i.i.d. noise."""

    def __init__(self, n_random: int) -> None:
        super().__init__()
        self.n_random = n_random
        self.gen = torch.Generator().manual_seed(123)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depth = x[:, :1] * 10.0
        sel = torch.exp(-((depth - 3.0) ** 2))
        noise = torch.rand(x.shape[0], self.n_random, *x.shape[-2:], generator=self.gen)
        return torch.cat([sel, noise], 1)


class SelectiveNet(nn.Module):
    def __init__(self, n_random: int = 40) -> None:
        super().__init__()
        self.feat = NoiseAndDepth(n_random)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feat(x)[:, :1] * 0 + x[:, :1] * 10.0


def test_permutation_pvalues_selective_vs_random() -> None:
    from scipy.stats import kstest

    image, depth = toy_batch(6, (32, 32), seed=3)
    image = torch.cat([depth / 10.0, image[:, 1:]], 1)
    res = run(SelectiveNet(40), TensorDataset(image, depth), ["feat"], binner={"name": "sid", "num_bins": 16},
              permutations=199)
    p = res.get("feat", "pvalue")
    assert float(p[0]) <= 0.02  # the selective unit beats every re-pairing
    rand = p[1:].numpy()
    assert 0.3 < rand.mean() < 0.7
    assert (rand < 0.05).mean() <= 0.2
    assert kstest(rand, "uniform").pvalue > 1e-3
    info = res.data["splits"]["test"]["feat"]
    assert info["perm_images"] == 6 and info["permutations"] == 199


def test_permutations_zero_disables_test() -> None:
    res = run(toy_model(), toy_dataset(4), ["dec3"], permutations=0)
    assert "test/dec3/pvalue" not in res.tensors
    with pytest.raises(DepthselError, match="permutations"):
        res.get("dec3", "pvalue")


# ----------------------------------------------------------------- persistence
def test_saved_result_reloads_identically_and_replots(tmp_path: Path) -> None:
    model = toy_model()
    res = run(model, toy_dataset(4), ["dec2", "dec3"], permutations=20)
    res.save(tmp_path / "r")
    back = load_result(tmp_path / "r")
    assert isinstance(back, DissectionResult)
    assert set(back.tensors) == set(res.tensors)
    for k, v in res.tensors.items():
        assert back.tensors[k].dtype == v.dtype
        torch.testing.assert_close(back.tensors[k], v, rtol=0, atol=0, equal_nan=True)
    assert json.dumps(back.data, sort_keys=True) == json.dumps(res.data, sort_keys=True)
    # NaN (e.g. target DS where no assigned bin was seen) compares unequal, so compare as JSON.
    assert json.dumps(back.summary_for("dec3").to_dict()) == json.dumps(res.summary_for("dec3").to_dict())
    assert (tmp_path / "r" / "result.csv").read_text().count("\n") == 1 + 16 + 8
    pngs = back.save_figures(tmp_path / "plots", units=[0, 3])
    assert len(pngs) == 6 and all(p.stat().st_size > 1000 for p in pngs)
    fm = plot_feature_maps(model, UNIT, toy_dataset(4), "dec3", [0, 5], back.binner("dec3"),
                           tmp_path / "fm.png", assigned=back.get("dec3", "assigned"), indices=[0, 1])
    assert fm.stat().st_size > 1000


def test_train_and_test_splits_and_fit_bins(tmp_path: Path) -> None:
    res = dissect_splits(toy_model(), UNIT, {"train": toy_dataset(4, 1), "test": toy_dataset(4, 2)},
                         layers=["dec3"], permutations=0, fit_bins_to_units=True)
    assert res.splits == ["train", "test"] and res.default_split() == "train"
    # dec3 has 8 units < 64 bins: 8 SID bins, unit k assigned bin k (Eq. 6 with Nb = K).
    assert res.get("dec3", "edges").numel() == 9
    assert torch.equal(res.get("dec3", "assigned", "test"), torch.arange(8))
    assert not torch.equal(res.get("dec3", "R_abs", "train"), res.get("dec3", "R_abs", "test"))
    back = load_result(res.save(tmp_path / "s"))
    assert isinstance(back, DissectionResult) and back.splits == ["train", "test"]


def test_assignment_file_and_matched(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"dec3": [7, 6, 5, 4, 3, 2, 1, 0]}))
    res = run(toy_model(), toy_dataset(4), ["dec3"], permutations=0, assignment=str(path))
    assert res.get("dec3", "assigned").tolist() == [7, 6, 5, 4, 3, 2, 1, 0]
    matched = run(toy_model(), toy_dataset(4), ["dec3"], permutations=0, assignment="matched")
    assert sorted(matched.get("dec3", "assigned").tolist()) == list(range(8))  # Nb = K when K < Nb


def test_bad_config_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DepthselError, match="preset"):
        DissectionAnalyzer(preset="published")
    with pytest.raises(DepthselError, match="assignment"):
        run(toy_model(), toy_dataset(2), ["dec3"], permutations=0, assignment=str(tmp_path / "nope.json"))
    with pytest.raises(DepthselError):
        DissectionAnalyzer(binner={"edges": [0.0, 1.0, 2.0]}, fit_bins_to_units=True).layer_binners({"x": 1})


def test_registered_and_edges_binner_roundtrip() -> None:
    analyzer = get_analyzer("dissection", permutations=0, binner={"edges": [0.0, 2.0, 5.0, 10.0]})
    assert isinstance(analyzer.binner, EdgesBinner) and analyzer.binner.num_bins == 3


# ------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_dissection_on_real_nyu(tmp_path: Path) -> None:
    ds = nyu_dataset()
    model = toy_model()
    res = run(model, ds, ["dec3"], permutations=20)
    counts = res.get("dec3", "counts")
    # Every valid NYU pixel lies in (0, 10] m, so the SID bins count them all.
    total = sum(int(ds[i]["valid"].sum()) for i in range(len(ds)))
    assert int(counts.sum()) == total
    assert res.data["splits"]["test"]["dec3"]["num_images"] == len(ds)
    assert 0.0 <= res.summary_for("dec3").argmax_ds <= 1.0
    assert res.save_figures(tmp_path, units=[1])
