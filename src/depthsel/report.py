"""What a report of a run or result directory shows: :func:`collect_report`.

It gathers what a run directory holds: the run config (``config.json`` and
friends, and the ``config``/``meta`` of ``result.json``), metrics from every
other ``*.json``/``*.jsonl`` and ``*.csv`` file as tables, and every PNG/JPEG
below it as base64 for an embedded ``data:`` URI. :mod:`depthsel.report_html`
renders it as one self-contained HTML page.
"""

from __future__ import annotations

import base64
import csv
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DepthselError, ResultFormatError
from .rundir import MANIFEST_NAME, RunDir, is_locked
from .safeio import read_json_bounded, read_regular, regular_files

__all__ = ["Report", "Table", "collect_report", "split_layer_rows"]

CONFIG_NAMES = {"config.json", "run.json", "run_config.json", "hparams.json", "args.json",
                "config.yaml", "config.yml", "config.toml", "hparams.yaml"}
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
MAX_ROWS = 200
MAX_IMAGE_BYTES = 25 * 1024 * 1024
MAX_TEXT_BYTES = 2 * 1024 * 1024


@dataclass
class Table:
    """One table of the report: a title, column names, rows and a note (e.g. truncation)."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""
    headline: bool = False


@dataclass
class Report:
    """Everything a report shows, before rendering."""

    title: str
    configs: list[tuple[str, str]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    images: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _scalar(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        if len(value) <= 16 and all(isinstance(v, (int, float, str, bool)) or v is None for v in value):
            return ", ".join(str(v) for v in value)
        return f"[{len(value)} values]"
    if isinstance(value, Mapping):
        return "{...}"
    return value


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[list[Any]]:
    rows: list[list[Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows.extend(_flatten(value, f"{name}."))
        else:
            rows.append([name, _scalar(value)])
    return rows


def _records_table(title: str, records: list[Mapping[str, Any]]) -> Table:
    columns: list[str] = []
    for rec in records:
        columns.extend(str(k) for k in rec if str(k) not in columns)
    rows = [[_scalar(rec.get(c, "")) for c in columns] for rec in records[:MAX_ROWS]]
    note = f"first {MAX_ROWS} of {len(records)} rows" if len(records) > MAX_ROWS else ""
    return Table(title, columns, rows, note)


def split_layer_rows(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``data["splits"][split][layer] = {...}`` as rows ``{split, layer, ...}``; empty when absent.

    One reader for the CLI's per-layer table and the report's.
    """
    splits = data.get("splits")
    if not isinstance(splits, Mapping) or not splits:
        return []
    rows: list[dict[str, Any]] = []
    for split, layers in splits.items():
        if not isinstance(layers, Mapping):
            return []
        for layer, values in layers.items():
            if not isinstance(values, Mapping):
                return []
            rows.append({"split": split, "layer": layer, **values})
    return rows


def _scalar_layer_rows(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """:func:`split_layer_rows` keeping scalars, with ``[low, high]`` intervals as text."""
    out = []
    for row in split_layer_rows(data):
        kept: dict[str, Any] = {}
        for k, v in row.items():
            if isinstance(v, (int, float, str, bool)) or v is None:
                kept[k] = v
            elif isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
                kept[k] = f"[{v[0]:.3g}, {v[1]:.3g}]"  # an interval
        out.append(kept)
    return out


def _number(text: Any) -> Any:
    """A CSV cell as int or float when it is one, so it is shown at report precision."""
    if not isinstance(text, str):
        return text
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _kv_table(title: str, data: Mapping[str, Any]) -> Table:
    rows = _flatten(data)
    note = f"first {MAX_ROWS} of {len(rows)} entries" if len(rows) > MAX_ROWS else ""
    return Table(title, ["key", "value"], rows[:MAX_ROWS], note)


def _json_tables(rel: str, payload: Any, report: Report) -> None:
    if rel.rsplit("/", 1)[-1] == "checkpoint.json":
        return  # optimizer and RNG bookkeeping of resumable runs, not results
    if isinstance(payload, Mapping) and isinstance(payload.get("table"), list) and payload["table"]:
        # An experiment summary: its comparison table is the headline of the report.
        if isinstance(payload.get("arms"), list):
            from .stats import format_comparison_table

            n = int(payload.get("num_seeds", 1))
            spread = ("mean ± 95% CI half-width over seeds; difference paired by seed, [95% CI], paired t-test p"
                      if n > 1 else "ONE seed: no seed spread; bracketed intervals resample test images")
            rows = format_comparison_table(payload)
            report.tables.insert(0, Table(f"{rel}: comparison, {n} seed{'s' if n != 1 else ''} "
                                          f"{payload.get('seeds', '')}", list(rows[0]), [list(r.values()) for r in rows],
                                          spread, headline=True))
        else:
            report.tables.insert(0, _records_table(f"{rel}: comparison", payload["table"]))
        if isinstance(payload.get("config"), Mapping):
            report.configs.insert(0, (f"{rel} [config]", json.dumps(payload["config"], indent=2, default=str)))
        return
    if isinstance(payload, Mapping) and payload.get("format") == "depthsel-result":
        # A saved Result: its data are the metrics, its config and meta are the run config.
        data = payload.get("data") or {}
        layer_rows = _scalar_layer_rows(data)
        if layer_rows:
            # A dissection: one card row per split and layer, not flattened keys.
            report.tables.append(_records_table(f"{rel} ({payload.get('kind', 'result')}, per layer)", layer_rows))
        else:
            report.tables.append(_kv_table(f"{rel} ({payload.get('kind', 'result')})", data))
        for part in ("config", "meta"):
            if payload.get(part):
                report.configs.append((f"{rel} [{part}]", json.dumps(payload[part], indent=2, default=str)))
    elif isinstance(payload, Mapping):
        report.tables.append(_kv_table(rel, payload))
    elif isinstance(payload, list) and payload and all(isinstance(r, Mapping) for r in payload):
        report.tables.append(_records_table(rel, payload))
    else:
        report.tables.append(Table(rel, ["value"], [[_scalar(payload)]]))


def collect_report(run_dir: str | Path, *, title: str | None = None, exclude: Iterable[Path] = (),
                   skip_invalid: bool = False) -> Report:
    """Gather configs, tables and images from ``run_dir`` (recursively).

    Only regular files inside ``run_dir`` are read: symlinks (to files or
    folders) are listed in :attr:`Report.skipped`, never followed, and JSON is
    parsed with bounded size and nesting. Every saved result (``result.json``)
    and every run manifest is verified first; one that fails raises
    :class:`ResultFormatError`, or with ``skip_invalid`` is left out, with the
    reason in :attr:`Report.skipped`.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise ResultFormatError(f"{str(root)!r} is not a directory; pass a run or result directory")
    skip = {Path(p).resolve() for p in exclude}
    report = Report(title=title or root.resolve().name)
    texts, skipped = regular_files(root, {".json", ".jsonl", ".csv", ".yaml", ".yml", ".toml"})
    report.skipped.extend(skipped)
    bad = _verify(root, texts, report, skip_invalid)
    for path in texts:
        if path.resolve() in skip or path.name == MANIFEST_NAME or _inside(path, bad):
            continue
        _add_text_file(root, path, report)
    images, skipped = regular_files(root, IMAGE_TYPES)
    report.skipped.extend(skipped)
    for path in images:
        if _inside(path, bad):
            continue
        rel = path.relative_to(root).as_posix()
        data = read_regular(path, MAX_IMAGE_BYTES)
        if len(data) > MAX_IMAGE_BYTES:
            report.skipped.append(f"{rel} (image over {MAX_IMAGE_BYTES // 1024 // 1024} MiB)")
            continue
        report.images.append((rel, IMAGE_TYPES[path.suffix.lower()], base64.b64encode(data).decode("ascii")))
    return report


def _inside(path: Path, dirs: set[Path]) -> bool:
    return any(d == path.parent or d in path.parents for d in dirs)


def _verify(root: Path, texts: list[Path], report: Report, skip_invalid: bool) -> set[Path]:
    """Verify every result and manifest under ``root``; returns the directories that failed."""
    from .results import load_result

    bad: set[Path] = set()
    # result.json before manifest.json: its own hashes give the more precise reason.
    checks = sorted((p for p in texts if p.name in ("result.json", MANIFEST_NAME)),
                    key=lambda p: (p.parent, p.name != "result.json"))
    for path in checks:
        folder = path.parent
        if folder in bad:
            continue
        try:
            if path.name == "result.json":
                load_result(folder)
            elif not is_locked(folder):  # a run still writing may be between two files
                problems = RunDir(folder).verify_manifest()
                if problems:
                    raise ResultFormatError("; ".join(problems))
        except DepthselError as exc:
            rel = folder.relative_to(root).as_posix() + "/"
            reason = str(exc).replace(str(folder) + "/", rel).replace(str(folder), rel)
            if not skip_invalid:
                raise ResultFormatError(
                    f"{rel} fails verification ({reason}); fix or remove it, or pass --skip-invalid "
                    "to leave it out of the report"
                ) from exc
            report.skipped.append(f"{rel} (fails verification: {reason})")
            bad.add(folder)
    return bad


def _add_text_file(root: Path, path: Path, report: Report) -> None:
    rel = path.relative_to(root).as_posix()
    raw = read_regular(path, MAX_TEXT_BYTES)
    if len(raw) > MAX_TEXT_BYTES:
        report.skipped.append(f"{rel} (over {MAX_TEXT_BYTES // 1024 // 1024} MiB)")
        return
    text = raw.decode("utf-8", errors="replace")
    if path.name in CONFIG_NAMES:
        report.configs.append((rel, text))
        return
    try:
        if path.suffix == ".json":
            _json_tables(rel, read_json_bounded(path, text=text), report)
        elif path.suffix == ".jsonl":
            records = [read_json_bounded(path, text=line) for line in text.splitlines() if line.strip()]
            if records and all(isinstance(r, Mapping) for r in records):
                report.tables.append(_records_table(rel, records))
        elif path.suffix == ".csv":
            records = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(text.splitlines())]
            if records:
                report.tables.append(_records_table(rel, records))
    except (ResultFormatError, csv.Error) as exc:
        report.skipped.append(f"{rel} (unreadable: {str(exc).replace(str(path), rel)})")
