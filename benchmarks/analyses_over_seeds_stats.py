"""Aggregation, verdicts, Markdown tables and figures for ``analyses_over_seeds.py``.

Every number is computed by :mod:`depthsel.stats` from the per-seed values kept in
the report, so the report can be re-checked from its own JSON:

* per model and metric: :func:`~depthsel.stats.seed_summary` (mean, 95% t-CI) and the
  one-sample t-test p of a zero mean (meaningful for the contrasts: gains, gaps, differences);
* interpretable − baseline: :func:`~depthsel.stats.paired_difference` (paired by seed);
* the claims each analysis makes in its paper get a verdict from the direction of the
  mean and the Benjamini-Hochberg-adjusted p over all claims (:func:`~depthsel.stats.benjamini_hochberg`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from depthsel.stats import benjamini_hochberg, paired_difference, seed_summary

MODELS = ("baseline", "interpretable")
ORDERS = ("most_selective_first", "least_selective_first", "random")
ALPHA = 0.05
#: Selectivity read from the experiment's saved dissections, per split.
DISSECTION = ("mean_ds", "mean_target_ds", "peak_on_target", "dead_units")
#: Last word of the metric keys that are contrasts (their zero test is shown).
CONTRASTS = ("gain", "change", "gap")


def prefix(analysis: str, layer: str, layers: Sequence[str]) -> str:
    """Key prefix: the analysis, plus the layer when several layers are hooked."""
    return analysis if len(layers) == 1 else f"{analysis}/{layer}"


def zero_test(values: Sequence[float]) -> float | None:
    """Two-sided one-sample t-test p of a zero mean (a paired test against zeros); None for one seed."""
    p = paired_difference([0.0] * len(values), values).pvalue
    return None if math.isnan(p) else p


def _finite(values: Sequence[Any]) -> bool:
    return all(v is not None and math.isfinite(float(v)) for v in values)


def summarise(per_seed: dict[str, dict[str, Any]], seeds: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Per metric key: each model's seed summary (+ zero-test p) and the paired difference."""
    # A key every seed of at least one model has (e.g. a saved dissection only one model has).
    keys = sorted(set().union(*(set.intersection(*(set(per_seed[str(s)][m]["scalars"]) for s in seeds))
                                for m in MODELS)))
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        vals = {m: [per_seed[str(s)][m]["scalars"].get(key) for s in seeds] for m in MODELS}
        entry: dict[str, Any] = {}
        for m in MODELS:
            # A metric undefined on some seed (e.g. no error bin) is reported, not averaged.
            entry[m] = (seed_summary(vals[m]).to_dict() | {"p_zero": zero_test(vals[m])}
                        if _finite(vals[m]) else {"values": vals[m], "undefined": True})
        if all(_finite(vals[m]) for m in MODELS):
            entry["difference"] = paired_difference(vals["baseline"], vals["interpretable"]).to_dict()
        out[key] = entry
    return out


def curve_bands(per_seed: dict[str, dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """Per model, layer, order and metric: mean and 95% t-CI at every ablation step."""
    out: dict[str, Any] = {}
    first = per_seed[str(seeds[0])]
    for m in MODELS:
        for layer, c0 in first[m]["curves"].items():
            entry: dict[str, Any] = {"steps": c0["steps"]}
            for order in ORDERS:
                for metric in ("delta1", "rmse"):
                    rows = np.asarray([per_seed[str(s)][m]["curves"][layer][order][metric] for s in seeds])
                    stats = [seed_summary(rows[:, j].tolist()) for j in range(rows.shape[1])]
                    entry[f"{order}/{metric}"] = {
                        "mean": [st.mean for st in stats],
                        "ci_low": [None if math.isnan(st.ci_low) else st.ci_low for st in stats],
                        "ci_high": [None if math.isnan(st.ci_high) else st.ci_high for st in stats]}
            out.setdefault(m, {})[layer] = entry
    return out


def claims(summary: dict[str, dict[str, Any]], lambdas: Sequence[float], layers: Sequence[str]) -> list[dict[str, Any]]:
    """The papers' claims as (analysis, statement, model or difference, key, expected sign)."""
    out: list[tuple[str, str, str, str, int]] = [
        ("correction", "the interpretable model gains more δ1 than the baseline (Table 3)", "difference",
         "correction/delta1_gain", +1),
        ("correction", "correction lowers the baseline's δ1 (Table 3)", "baseline", "correction/delta1_gain", -1),
        ("correction", "correction raises the interpretable model's δ1 (Table 3)", "interpretable",
         "correction/delta1_gain", +1),
    ]
    for layer in layers:
        pa, pv = prefix("ablation", layer, layers), prefix("adversarial", layer, layers)
        tag = "" if len(layers) == 1 else f" [{layer}]"
        for m in MODELS:
            out += [
                ("ablation", f"{m}: most-selective-first loses more δ1 than random (Fig. 2){tag}", m,
                 f"{pa}/auc_most_minus_random", -1),
                ("ablation", f"{m}: most-selective-first loses more δ1 than least-selective-first{tag}", m,
                 f"{pa}/auc_most_minus_least", -1),
                ("adversarial", f"{m}: error-bin units overlap the error region more than other units (Fig. 8){tag}",
                 m, f"{pv}/iou_gap", +1),
            ]
        out.append(("adversarial", f"the error-bin/other IoU gap is larger in the interpretable model{tag}",
                    "difference", f"{pv}/iou_gap", +1))
    for lam in lambdas:
        for m in MODELS:
            out.append(("masks", f"{m}, λ={lam:g}: the learned binary mask beats the same-sparsity edge mask "
                        "(RMSE edge − mask > 0)", m, f"masks/lambda={lam:g}/edge_minus_binary", +1))
    order = ("correction", "ablation", "adversarial", "masks")
    rows = []
    for analysis, text, who, key, sign in sorted(out, key=lambda c: order.index(c[0])):
        if key not in summary or "mean" not in summary[key].get(who, {}):
            continue
        st = summary[key][who]
        p = st.get("pvalue") if who == "difference" else st.get("p_zero")
        rows.append({"analysis": analysis, "claim": text, "who": who, "key": key, "expected_sign": sign,
                     "mean": st["mean"], "ci_low": st["ci_low"], "ci_high": st["ci_high"], "n": st["n"], "p": p})
    qs = benjamini_hochberg([math.nan if r["p"] is None else r["p"] for r in rows])
    for r, q in zip(rows, qs):
        r["q_bh"] = None if math.isnan(q) else float(q)
        r["verdict"] = verdict(r)
    return rows


def verdict(row: dict[str, Any]) -> str:
    """``holds`` / ``reversed`` (BH q < 0.05 with / against the expected sign), else ``not shown``.

    A ``not shown`` whose unadjusted p is below 0.05 says on which side of zero it fell, so
    a trend that the adjustment removes is still visible.
    """
    if row["n"] < 2 or row["q_bh"] is None:
        return "one seed: no verdict"
    expected = row["mean"] * row["expected_sign"] > 0
    if row["q_bh"] < ALPHA:
        return "holds" if expected else "reversed"
    if row["p"] is not None and row["p"] < ALPHA:
        return f"not shown ({'expected' if expected else 'opposite'} sign at unadjusted p < {ALPHA})"
    return "not shown"


def build_report(per_seed: dict[str, dict[str, Any]], seeds: Sequence[int], cfg: dict[str, Any],
                 settings: dict[str, Any]) -> dict[str, Any]:
    """The JSON report: per-seed values, summaries, curve bands and claims."""
    summary = summarise(per_seed, seeds)
    layers = list(cfg["layers"])
    lambdas = settings["mask_lambdas"] if settings.get("masks") else []
    return {"seeds": list(seeds), "num_seeds": len(seeds), "settings": settings,
            "experiment": {k: cfg.get(k) for k in ("name", "data", "train_data", "test_data", "size", "model",
                                                   "model_config", "layers", "regularised_layers", "epochs", "binning",
                                                   "protocol")},
            "per_seed": per_seed, "summary": summary, "curves": curve_bands(per_seed, seeds),
            "claims": claims(summary, lambdas, layers)}


# ------------------------------------------------------------------ tables
def fmt(st: dict[str, Any] | None, digits: int = 3) -> str:
    """``0.512 ± 0.034`` (95% half-width), ``0.512 (1 seed)`` or ``n/a``."""
    if not st or "mean" not in st:
        return "n/a"
    if st.get("n", 1) < 2 or st.get("half_width") is None:
        return f"{st['mean']:.{digits}f} (1 seed)"
    return f"{st['mean']:.{digits}f} ± {st['half_width']:.{digits}f}"


def fmt_p(p: float | None) -> str:
    return "–" if p is None else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def table(report: dict[str, Any], rows: Sequence[tuple[str, str]]) -> str:
    """Markdown: one row per (key, label) with both models and their paired difference.

    Rows whose key ends in a contrast name (gain, change, minus, gap) also show the
    one-sample p of a zero mean in each model's cell.
    """
    lines = ["| | baseline | interpretable | interpretable − baseline (p) |", "|---|---|---|---|"]
    for key, label in rows:
        e = report["summary"].get(key)
        if e is None:
            continue
        contrast = key.rsplit("/", 1)[-1].split("_")[-1] in CONTRASTS or "_minus_" in key
        cells = [fmt(e[m]) + (f" (p {fmt_p(e[m].get('p_zero'))})" if contrast and "mean" in e[m] else "")
                 for m in MODELS]
        d = e.get("difference")
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | "
                     + (f"{fmt(d)} ({fmt_p(d.get('pvalue'))})" if d else "n/a") + " |")
    return "\n".join(lines)


def _layer_tables(report: dict[str, Any]) -> list[str]:
    """Ablation and adversarial tables, one pair per hooked layer."""
    layers = report["experiment"]["layers"]
    parts: list[str] = []
    for layer in layers:
        pa, pv = prefix("ablation", layer, layers), prefix("adversarial", layer, layers)
        tag = "" if len(layers) == 1 else f" ({layer})"
        parts += [f"### Ablation{tag}", table(report, [
            (f"{pa}/auc_delta1_most_selective_first", "mean δ1 over the curve, most selective first"),
            (f"{pa}/auc_delta1_least_selective_first", "mean δ1 over the curve, least selective first"),
            (f"{pa}/auc_delta1_random", "mean δ1 over the curve, random"),
            (f"{pa}/auc_most_minus_random", "most − random"), (f"{pa}/auc_most_minus_least", "most − least"),
            (f"{pa}/top_unit_share", "δ1 lost by the most important single unit / by all units"),
            (f"{pa}/top_unit_ds_rank", "train-DS rank of that unit (1 = least selective)"),
            (f"{pa}/top_unit_loudness", "its mean abs. activation / median of the other units'"),
            (f"{pa}/spearman_ds_importance", "Spearman(train DS, single-unit δ1 loss)")])]
        adv = [(f"{pv}/top_bin_error_share", "error share of the top bin"),
               (f"{pv}/iou_error_units", "IoU, units of the error-dominant bins"),
               (f"{pv}/iou_other_units", "IoU, other units"), (f"{pv}/iou_gap", "IoU gap (error-bin − other)"),
               (f"{pv}/iou_rank", "rank of error-bin units among the others (0.5 = chance)")]
        if layer == layers[0]:
            adv = [("adversarial/delta1_clean", "δ1 clean"), ("adversarial/delta1_adversarial", "δ1 adversarial"),
                   ("adversarial/delta1_drop", "δ1 drop")] + adv
        parts += [f"### Adversarial (FGSM){tag}", table(report, adv)]
    return parts


def _dissection_tables(report: dict[str, Any]) -> list[str]:
    """Selectivity of the analysed models, from the experiment's saved dissections."""
    layers = report["experiment"]["layers"]
    parts: list[str] = []
    for layer in layers:
        pd = prefix("dissection", layer, layers)
        labels = {"mean_ds": "mean DS", "mean_target_ds": "mean target DS", "peak_on_target": "peak-on-target",
                  "dead_units": "dead units", "frac_significant_bh": "fraction of units significant (BH)"}
        rows = [(f"{pd}/{split}/{name}", f"{labels[name]}, {where}")
                for split, where in (("test", "held-out"), ("train", "train split"))
                for name in (*DISSECTION, "frac_significant_bh")]
        if any(k in report["summary"] for k, _ in rows):
            parts += [f"### Dissection{'' if len(layers) == 1 else f' ({layer})'} (the experiment's saved results)",
                      table(report, rows)]
    return parts


def _mask_table(report: dict[str, Any]) -> list[str]:
    lams = report["settings"]["mask_lambdas"] if report["settings"].get("masks") else []
    rows: list[tuple[str, str]] = []
    for lam in lams:
        k = f"masks/lambda={lam:g}"
        rows += [(f"{k}/sparseness", f"λ={lam:g}: pixels kept"), (f"{k}/rmse_full", f"λ={lam:g}: RMSE full image"),
                 (f"{k}/rmse_binary", f"λ={lam:g}: RMSE binary mask"),
                 (f"{k}/rmse_edge", f"λ={lam:g}: RMSE edge mask"),
                 (f"{k}/edge_minus_binary", f"λ={lam:g}: RMSE edge − mask")]
    return ["### Masks (Hu et al.)", table(report, rows)] if rows else []


def markdown(report: dict[str, Any]) -> str:
    """All tables of the report as Markdown (mean ± 95% CI half-width over seeds)."""
    parts = [f"Seeds: {report['seeds']} (n = {report['num_seeds']}); cells are mean ± 95% t-CI half-width "
             "over seeds; p: paired t-test over seeds (in a model's cell: of a zero mean).",
             "### Correction (oracle)", table(report, [
                 ("correction/delta1_clean", "δ1 clean"), ("correction/delta1_corrected", "δ1 corrected"),
                 ("correction/delta1_gain", "δ1 gain (corrected − clean)"),
                 ("correction/rmse_clean", "RMSE clean (m)"), ("correction/rmse_corrected", "RMSE corrected (m)"),
                 ("correction/rmse_change", "RMSE change (m)")])]
    parts += _dissection_tables(report) + _layer_tables(report) + _mask_table(report)
    lines = ["| analysis | claim | mean [95% CI] | p | BH q | verdict |", "|---|---|---|---|---|---|"]
    for c in report["claims"]:
        ci = "" if c["ci_low"] is None else f" [{c['ci_low']:.3f}, {c['ci_high']:.3f}]"
        lines.append(f"| {c['analysis']} | {c['claim']} | {c['mean']:.3f}{ci} | {fmt_p(c['p'])} | "
                     f"{fmt_p(c['q_bh'])} | **{c['verdict']}** |")
    parts += ["### Verdicts", "\n".join(lines)]
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------- figures
def plot_all(report: dict[str, Any], out: Path) -> list[Path]:
    """Ablation curves with their band across seeds, and a forest plot of the claims."""
    layers = report["experiment"]["layers"]
    paths = [plot_ablation(report, layer, out / ("ablation_curves.png" if len(layers) == 1
                                                  else f"ablation_curves_{layer.replace('/', '_')}.png"))
             for layer in layers]
    return paths + [plot_claims(report, out / "claims.png")]


def plot_ablation(report: dict[str, Any], layer: str, path: Path) -> Path:
    """δ1 and RMSE against units ablated, three orders, 95% t-CI band over seeds, per model."""
    from depthsel_plugins.analyses.figures import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(8.5, 5.6), squeeze=False, sharex=True)
    for j, m in enumerate(MODELS):
        c = report["curves"][m][layer]
        for i, metric in enumerate(("delta1", "rmse")):
            ax = axes[i, j]
            for order, style in zip(ORDERS, ("-o", "-s", "--")):
                band = c[f"{order}/{metric}"]
                line = ax.plot(c["steps"], band["mean"], style, ms=3, label=order.replace("_", " "))[0]
                if band["ci_low"][0] is not None:
                    ax.fill_between(c["steps"], band["ci_low"], band["ci_high"], alpha=0.2, color=line.get_color())
            ax.set_title(f"{m}: {'δ1' if metric == 'delta1' else 'RMSE (m)'}", fontsize=10)
            if i == 1:
                ax.set_xlabel(f"units of {layer} ablated")
    axes[0, 0].legend(fontsize=7)
    n = report["num_seeds"]
    fig.suptitle(f"Cumulative ablation of {layer}, {n} seed{'s' if n != 1 else ''}"
                 + (" (band: 95% t-CI over seeds)" if n > 1 else " (no band from one seed)"), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=80)


def plot_claims(report: dict[str, Any], path: Path) -> Path:
    """Each claim's mean with its 95% CI; the expected side of zero is shaded."""
    from depthsel_plugins.analyses.figures import pyplot, save_figure

    plt = pyplot()
    rows = report["claims"]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.2))
    for i, r in enumerate(rows):
        lo = r["mean"] if r["ci_low"] is None else r["ci_low"]
        hi = r["mean"] if r["ci_high"] is None else r["ci_high"]
        color = {"holds": "tab:green", "reversed": "tab:red"}.get(r["verdict"], "tab:gray")
        ax.plot([lo, hi], [i, i], color=color, lw=2)
        ax.plot([r["mean"]], [i], "o", color=color, ms=4)
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r['analysis']}: {r['claim'][:95]} ({'+' if r['expected_sign'] > 0 else '−'})"
                        for r in rows], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("effect (expected sign in brackets); green holds, red reversed, grey not shown", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=80)
