"""A report as one self-contained HTML page: :func:`render_report` and :func:`write_report`.

The page has no scripts, no external stylesheet, font or image, and a
Content-Security-Policy that forbids the browser to fetch anything, so it can
be mailed, archived or opened offline and always shows the same thing. What
it shows is gathered by :func:`depthsel.report.collect_report`.
"""

from __future__ import annotations

import html
import re
import time
from pathlib import Path
from typing import Any

from ._version import __version__
from .checkpoints import atomic_write_bytes
from .errors import RunDirError
from .report import Report, collect_report

__all__ = ["REPORT_MARK", "check_report_target", "render_report", "write_report"]

#: Tables longer than this fold away (except headline tables).
FOLD_ROWS = 12
REPORT_MARK = "depthsel report:"
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1200px;
padding:0 1rem;color:#222;line-height:1.4}
h1{font-size:1.6rem}h2{border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0 1.5rem;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.25rem .6rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f7f7f7;padding:.8rem;overflow:auto;font-size:.85rem;max-height:40rem}
.tablewrap{overflow-x:auto;max-width:100%}caption{text-align:left;font-weight:600;padding:.3rem 0}
h3{font-size:1.05rem;margin:1.2rem 0 .3rem;color:#444}
figure{display:inline-block;margin:.5rem 1rem 1rem 0;vertical-align:top;max-width:100%}
figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.85rem;color:#555}
.note{color:#777;font-size:.85rem}details{margin:.3rem 0}summary{cursor:pointer;font-weight:600;color:#345}
"""


def _natural(text: str) -> list[Any]:
    """Sort key that puts unit5 before unit10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return f"<td>{html.escape(str(value))}</td>"
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def render_report(report: Report) -> str:
    """Render a :class:`Report` as one HTML page (no scripts, no external resources)."""
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{REPORT_MARK} {e(report.title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>depthsel report: {e(report.title)}</h1>",
        f'<p class="note">generated {e(time.strftime("%Y-%m-%d %H:%M:%S"))} by depthsel {e(__version__)}</p>',
        "<h2>Metrics</h2>",
    ]
    if not report.tables:
        out.append('<p class="note">no JSON or CSV metrics found</p>')
    for table in report.tables:
        # Long per-unit tables fold away, so the headline and per-layer rows stay in view.
        folded = len(table.rows) > FOLD_ROWS and not table.headline
        if folded:
            out.append(f"<details><summary>{e(table.title)} ({len(table.rows)} rows)</summary>")
        out.append(f'<div class="tablewrap"><table class="metrics"><caption>{e(table.title)}</caption><thead><tr>')
        out.extend(f"<th>{e(c)}</th>" for c in table.columns)
        out.append("</tr></thead><tbody>")
        for row in table.rows:
            out.append("<tr>" + "".join(_cell(v) for v in row) + "</tr>")
        out.append("</tbody></table></div>")
        if table.note:
            out.append(f'<p class="note">{e(table.note)}</p>')
        if folded:
            out.append("</details>")
    out.append("<h2>Figures</h2>")
    if not report.images:
        out.append('<p class="note">no images found</p>')
    folder = None
    for rel, mime, data in _ordered_images(report.images):
        here = rel.rsplit("/", 1)[0] if "/" in rel else "."
        if here != folder:
            folder = here
            out.append(f"<h3>{e(here)}</h3>")
        out.append(f'<figure><img src="data:{mime};base64,{data}" alt="{e(rel)}">'
                   f"<figcaption>{e(rel.rsplit('/', 1)[-1])}</figcaption></figure>")
    out.append("<h2>Run configuration</h2>")
    if not report.configs:
        out.append('<p class="note">no run configuration found</p>')
    for rel, text in report.configs:
        out.append(f"<h3>{e(rel)}</h3><pre>{e(text)}</pre>")
    if report.skipped:
        out.append("<h2>Skipped files</h2><ul>")
        out.extend(f"<li>{e(s)}</li>" for s in report.skipped)
        out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(out)


def _ordered_images(images: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Experiment-level plots first (shallowest folders), then by folder and natural name order."""
    return sorted(images, key=lambda im: (im[0].count("/"), _natural(im[0])))


def check_report_target(target: Path, *, force: bool) -> None:
    """Refuse to replace anything but an earlier depthsel report, unless ``force``.

    Raises
    ------
    RunDirError
        ``target`` exists and is not a report this function's caller wrote before
        (``report --out RUN/result.json`` must not destroy the result).
    """
    if force or not (target.exists() or target.is_symlink()):
        return
    if target.is_file() and not target.is_symlink():
        with open(target, "rb") as fh:
            head = fh.read(2048)
        if head.startswith(b"<!DOCTYPE html>") and REPORT_MARK.encode() in head:
            return
    raise RunDirError(f"{str(target)!r} already exists and is not a depthsel report; choose another "
                      "--out, or pass --force to overwrite it")


def write_report(run_dir: str | Path, out: str | Path | None = None, *, title: str | None = None,
                 force: bool = False, skip_invalid: bool = False) -> Path:
    """Write ``report.html`` for ``run_dir`` (default ``run_dir/report.html``) atomically.

    ``force`` and ``skip_invalid`` are those of :func:`check_report_target` and
    :func:`collect_report`.

    Returns
    -------
    Path
        Where the report was written.
    """
    root = Path(run_dir)
    target = Path(out) if out is not None else root / "report.html"
    check_report_target(target, force=force)
    report = collect_report(root, title=title, exclude=[target], skip_invalid=skip_invalid)
    return atomic_write_bytes(target, render_report(report).encode("utf-8"))
