"""report.html: self-contained (no network), tables and every image embedded."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_support import invoke, invoke_json

from depthsel.results import Result

CHROMIUM = Path("/usr/bin/chromium")
# A valid 1x1 PNG; the second image is made by matplotlib to be a real figure.
PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


class _ReportResult(Result):
    kind = "tests.report"

    def rows(self) -> list[dict[str, Any]]:
        return [{"unit": 0, "ds": 0.5}, {"unit": 1, "ds": 0.75}]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = tmp_path / "run"
    (run / "figures").mkdir(parents=True)
    (run / "figures" / "dot.png").write_bytes(PNG_1X1)
    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
    ax.plot([0, 1, 2], [0.4, 0.6, 0.75])
    fig.savefig(run / "ds_curve.png")
    plt.close(fig)
    (run / "metrics.json").write_text(json.dumps({"mean_ds": 0.7529, "rmse": 0.422,
                                                  "per_layer": {"D": 0.71, "MFF": 0.79}}))
    (run / "config.json").write_text(json.dumps({"model": "hu_mff_resnet50", "weight": 0.1,
                                                 "see": "https://example.org/not-a-link"}))
    (run / "log.jsonl").write_text('{"epoch": 0, "loss": 1.5}\n{"epoch": 1, "loss": 1.2}\n')
    _ReportResult(tensors={"ds": torch.tensor([0.5, 0.75])}, data={"mean_ds": 0.625, "units": 2},
                  config={"num_bins": 64}).save(run / "dissection")
    return run


def _check_self_contained(text: str, n_images: int) -> None:
    assert not re.search(r"""(?:src|href|action|srcset)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I)
    assert "<script" not in text.lower() and "<link" not in text.lower()
    assert "url(" not in text  # no CSS fetches either
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', text)
    assert len(srcs) == n_images and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1]).startswith(b"\x89PNG")


def test_report_is_self_contained(runner: Any, run_dir: Path) -> None:
    data = invoke_json(runner, ["report", run_dir])
    out = run_dir / "report.html"
    assert data["out"] == str(out) and data["images"] == 2
    text = out.read_text()
    _check_self_contained(text, n_images=2)
    assert "0.7529" in text and "per_layer.MFF" in text          # metrics.json
    assert "hu_mff_resnet50" in text                              # run config
    assert "num_bins" in text and "0.625" in text                 # result.json data + config
    assert "unit" in text and "0.75" in text                      # result.csv
    assert "loss" in text                                         # log.jsonl
    assert text.count("<table") >= 4
    assert "Content-Security-Policy" in text


def test_report_custom_out_and_rerun(runner: Any, run_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "r.html"
    result = invoke(runner, ["report", run_dir, "--out", target, "--title", "<my run>"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(target)
    text = target.read_text()
    assert "&lt;my run&gt;" in text and "<my run>" not in text
    # A report inside the run dir does not swallow itself on the next run.
    invoke(runner, ["report", run_dir])
    again = invoke_json(runner, ["report", run_dir])
    assert again["images"] == 2


def test_report_bad_dir(runner: Any, tmp_path: Path) -> None:
    result = invoke(runner, ["report", tmp_path / "missing"])
    assert result.exit_code == 1 and "not a directory" in result.stderr


def test_report_renders_in_chromium(runner: Any, run_dir: Path, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but /usr/bin/chromium is missing: the report cannot be checked in a browser")
        pytest.skip("/usr/bin/chromium is not installed")
    invoke_json(runner, ["report", run_dir])
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = (run_dir / "report.html").as_uri()
    dom = subprocess.run([str(CHROMIUM), *flags, "--dump-dom", url], capture_output=True, text=True,
                         timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<table") >= 4
    assert len(re.findall(r"<img[^>]*src=\"data:image/png", dom.stdout)) == 2
    shot = tmp_path / "shot.png"
    subprocess.run([str(CHROMIUM), *flags, f"--screenshot={shot}", "--window-size=1000,2000", url],
                   capture_output=True, timeout=90)
    assert shot.is_file() and shot.read_bytes().startswith(b"\x89PNG")


def test_experiment_summary_is_the_headline_and_checkpoints_are_skipped(tmp_path: Path) -> None:
    from depthsel.report import collect_report

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "checkpoint.json").write_text(json.dumps({"step": 3, "optimizer": {}}))
    (tmp_path / "metrics.json").write_text(json.dumps({"rmse": 0.5}))
    table = [{"metric": "RMSE", "baseline": 0.5, "interpretable": 0.4}]
    (tmp_path / "summary.json").write_text(json.dumps({"table": table, "config": {"epochs": 2}}))
    report = collect_report(tmp_path)
    assert report.tables[0].title.startswith("summary.json")
    assert not any("checkpoint.json" in t.title for t in report.tables)


def test_experiment_headline_first_long_tables_folded_numbers_short(tmp_path: Path) -> None:
    """An experiment report: the seed table is the open headline, per-unit CSVs fold, 4 digits, natural order."""
    from depthsel.report import collect_report
    from depthsel.report_html import render_report

    run = tmp_path / "exp"
    (run / "seed0" / "baseline").mkdir(parents=True)
    summary = {"kind": "experiment", "num_seeds": 2, "seeds": [0, 1],
               "arms": [{"label": "baseline", "weight": 0.0}, {"label": "interpretable", "weight": 1.0}],
               "table": [{"key": "rmse", "metric": "RMSE (m)", "better": "lower",
                          "arms": {"baseline": {"n": 2, "mean": 0.5, "half_width": 0.1, "values": [0.4, 0.6]},
                                   "interpretable": {"n": 2, "mean": 0.45, "half_width": 0.05, "values": [0.42, 0.48]}},
                          "difference": {"interpretable": {"mean": -0.05, "ci_low": -0.3, "ci_high": 0.2,
                                                           "pvalue": 0.4}}}] * 14}
    (run / "summary.json").write_text(json.dumps(summary))
    rows = "\n".join(f"{i},0.123456789012345" for i in range(30))
    (run / "seed0" / "baseline" / "units.csv").write_text("unit,ds\n" + rows)
    for name in ("unit10.png", "unit5.png"):
        (run / "seed0" / "baseline" / name).write_bytes(_png())
    page = render_report(collect_report(run))
    head = page.index("comparison, 2 seeds")
    assert "<details>" not in page[:head]  # the headline is never folded away
    assert "0.5 ± 0.1" in page and "-0.05 [-0.3, 0.2]" in page
    assert page.index("<details><summary>seed0/baseline/units.csv (30 rows)") > head
    assert "0.1235" in page and "0.123456789" not in page
    assert page.index('alt="seed0/baseline/unit5.png"') < page.index('alt="seed0/baseline/unit10.png"')


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    return buf.getvalue()
