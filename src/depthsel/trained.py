"""What a training run saved about itself, so analyses use it instead of defaults.

:class:`~depthsel.training.Trainer` writes ``config.json`` (a
:class:`~depthsel.training.TrainConfig` with its
:class:`~depthsel.training.SelectivityConfig`) next to ``model.safetensors``,
whose metadata also records the input normalisation. A dissection of that
model must bin depth and assign units exactly as the training did: with 8
units and 16 bins, fitting the bins to the units or not turns a target DS of
+0.42 into -0.15 on the same frames. These helpers read the saved choices.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ResultFormatError

__all__ = ["run_config_path", "saved_selectivity", "dissection_options", "saved_normalization"]


def run_config_path(path: str | Path) -> Path | None:
    """``config.json`` of the run that ``path`` (a run directory or a file in it) belongs to."""
    p = Path(path).expanduser()
    folder = p if p.is_dir() else p.parent
    candidate = folder / "config.json"
    return candidate if candidate.is_file() else None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultFormatError(f"{path} is not readable JSON ({exc}); fix or delete it") from exc
    if not isinstance(data, dict):
        raise ResultFormatError(f"{path} does not hold a training configuration object")
    return data


def saved_selectivity(path: str | Path) -> dict[str, Any] | None:
    """The ``selectivity`` section a training run saved, or ``None`` (no run, or a baseline).

    Only ``config.json`` files written by :class:`~depthsel.training.Trainer`
    (they have ``selectivity`` and ``epochs``) are read; other JSON is ignored.
    """
    cfg_path = run_config_path(path)
    if cfg_path is None:
        return None
    data = _read_config(cfg_path)
    if "epochs" not in data or "selectivity" not in data:
        return None
    sel = data["selectivity"]
    if sel is None:
        return None
    if not isinstance(sel, dict) or "binner" not in sel:
        raise ResultFormatError(f"{cfg_path}: 'selectivity' has no binner; the run's config is damaged")
    return sel


def dissection_options(path: str | Path) -> dict[str, Any]:
    """Dissection options that reproduce a run's binning: ``binner``, ``fit_bins_to_units``, ``assignment``.

    Empty when ``path`` belongs to no selectivity-trained run. ``layers`` (the
    trained layers) is included when the run named them.
    """
    sel = saved_selectivity(path)
    if sel is None:
        return {}
    out: dict[str, Any] = {"binner": dict(sel["binner"]),
                           "fit_bins_to_units": bool(sel.get("fit_bins_to_units", False)),
                           "assignment": sel.get("assignment") or None}
    if sel.get("layers"):
        out["layers"] = list(sel["layers"])
    return out


def saved_normalization(path: str | Path) -> str | None:
    """The input normalisation a run recorded for its weights, or ``None`` when it did not."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception:  # noqa: BLE001 - an unreadable file is reported by the loader itself
            meta = {}
        if meta.get("normalization"):
            return str(meta["normalization"])
    cfg_path = run_config_path(p)
    if cfg_path is not None:
        value = _read_config(cfg_path).get("normalization")
        if value:
            return str(value)
    return None
