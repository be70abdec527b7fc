"""Result objects that save as safetensors + JSON (+ CSV), never pickle.

A result directory holds ``result.safetensors`` (tensors), ``result.json``
(kind, format version, config, provenance, tensor specs, scalars) and
optionally ``result.csv`` (a flat table for spreadsheets). Every file is
written atomically; on load, the JSON is validated and every tensor's shape
and dtype is checked against the specs recorded at save time.

Which class a loaded result gets: the JSON names its ``kind``, and
:func:`load_result` maps it to a class *without importing or loading
anything*: the ``expected`` class the caller passed, then the ``types`` mapping
the caller passed, then a :class:`Result` subclass already defined in this
process (defining a subclass with a ``kind`` records it), else the plain
:class:`Result`, which still holds every tensor and value. Loading a result
therefore never runs plugin code: a file cannot make depthsel import a module
it names (which is why the JSON does not carry an importable class path), and
reading results never depends on which plugins are installed or broken. A
caller that wants the plugins' classes asks for them explicitly:
``load_result(path, types=depthsel.api.result_types())``, which consults the
``register_results`` hook through the plugin registry.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar

import torch

from ._version import __version__
from .checkpoints import atomic_write, atomic_write_bytes
from .errors import DepthselError, ResultFormatError
from .figures import save_figure

__all__ = ["Result", "load_result", "provenance", "content_hash", "FORMAT_VERSION"]

# 2: the tensors hash is mandatory and the JSON carries content_sha256.
FORMAT_VERSION = 2
_TENSORS = "result.safetensors"
_JSON = "result.json"
_CSV = "result.csv"
_REGISTRY: dict[str, type["Result"]] = {}


def provenance(dataset_fingerprint: str | None = None) -> dict[str, Any]:
    """Versions and environment recorded with every result."""
    return {
        "depthsel_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created_unix": time.time(),
        "dataset_fingerprint": dataset_fingerprint,
    }


@dataclass
class Result:
    """Base class of analysis results.

    Subclasses set :attr:`kind`, hold tensors in :attr:`tensors` and
    JSON-serialisable values in :attr:`data`, and may override :meth:`rows`
    to provide a CSV table, and :meth:`plot` with :meth:`figures` to draw it.
    """

    kind: ClassVar[str] = "result"
    #: Resolution of the files :meth:`save_figures` writes.
    figure_dpi: ClassVar[int] = 100
    #: Whether :meth:`save` also writes the figures beside the result (for results whose
    #: figure is part of what they are, e.g. an attack's panel; the CLI then adds no copy).
    figures_in_save: ClassVar[bool] = False
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            _REGISTRY[cls.kind] = cls

    # ----------------------------------------------------------------- table
    def rows(self) -> list[dict[str, Any]]:
        """Flat rows for ``result.csv``; empty means no CSV is written."""
        return []

    def to_csv(self, path: str | Path) -> Path:
        """Write :meth:`rows` as a CSV file (atomically) and return its path."""
        rows = self.rows()
        if not rows:
            raise ResultFormatError(f"a {self.kind} result has no per-row table to write as CSV")
        return atomic_write_bytes(Path(path), _csv_bytes(rows))

    def summary(self) -> dict[str, Any]:
        """A compact JSON-serialisable summary (what ``--format json`` prints)."""
        return {"kind": self.kind, **{k: v for k, v in self.data.items() if _is_scalarish(v)}}

    # --------------------------------------------------------------- figures
    def plot(self, ax: Any = None, **options: Any) -> Any:
        """Draw this result and return the matplotlib ``Figure``.

        Parameters
        ----------
        ax
            A matplotlib ``Axes`` to draw into (its figure is returned); ``None``
            draws a new figure. A figure of several panels needs ``ax=None`` or
            an option that picks one panel.
        **options
            What to draw, per result kind (e.g. ``layer=``, ``unit=``, ``metric=``).

        Raises
        ------
        DepthselError
            Always, here: a result kind that draws nothing has nothing to plot.
        """
        if isinstance(ax, (str, PathLike)):
            raise DepthselError(f"{type(self).__name__}.plot draws into a matplotlib Axes and returns "
                                f"the Figure; to write PNG files use save_figures({str(ax)!r})")
        raise DepthselError(f"a {self.kind!r} result has nothing to plot; its numbers are in "
                            "summary() and rows()")

    def figures(self, **options: Any) -> dict[str, dict[str, Any]]:
        """The files :meth:`save_figures` writes: relative path -> keyword options of :meth:`plot`.

        Empty here: a result kind that draws nothing writes no file.
        """
        return {}

    def save_figures(self, out_dir: str | Path, **options: Any) -> list[Path]:
        """Write every figure of :meth:`figures` under ``out_dir`` (atomically); returns the paths."""
        out = Path(out_dir)
        return [save_figure(self.plot(**plot_options), out / name, dpi=self.figure_dpi)
                for name, plot_options in self.figures(**options).items()]

    # ------------------------------------------------------------------- I/O
    def save(self, directory: str | Path) -> Path:
        """Write the result into ``directory`` atomically; returns the directory."""
        from safetensors.torch import save_file

        out = Path(directory)
        created = not out.exists()
        fresh = not (out / _JSON).exists()
        out.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        try:
            tensors = {k: v.detach().contiguous().cpu().clone() for k, v in self.tensors.items()}
            specs = {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                     for k, v in tensors.items()}
            payload = {
                "format": "depthsel-result",
                "format_version": FORMAT_VERSION,
                "kind": self.kind,
                "config": self.config,
                "meta": self.meta,
                "data": self.data,
                "tensor_specs": specs,
            }
            # Serialise before touching the directory: a value JSON cannot hold fails here.
            json.dumps(payload, default=_json_default, allow_nan=True)
            digest: dict[str, str] = {}

            def write_tensors(tmp: Path) -> None:
                save_file(tensors, str(tmp))
                digest["sha256"] = hashlib.sha256(tmp.read_bytes()).hexdigest()

            # Tensors first, JSON last: a directory whose JSON exists is complete. The JSON
            # records the tensor file's hash, so an interrupted overwrite (new tensors, old
            # JSON) is detected on load instead of mixing two results.
            written.append(atomic_write(out / _TENSORS, write_tensors))
            payload["tensors_sha256"] = digest["sha256"]
            # The JSON carries a hash of its own canonical content, so a hand-edited number
            # is caught on load like a swapped tensors file.
            plain = json.loads(json.dumps(payload, default=_json_default, allow_nan=True))
            plain["content_sha256"] = content_hash(plain)
            text = json.dumps(plain, indent=2, sort_keys=True, allow_nan=True)
            rows = self.rows()
            if rows:
                written.append(atomic_write_bytes(out / _CSV, _csv_bytes(rows)))
            atomic_write_bytes(out / _JSON, text.encode())
        except BaseException:
            if fresh:
                # Leave either a complete result or nothing.
                for p in written:
                    p.unlink(missing_ok=True)
                if created:
                    try:
                        out.rmdir()
                    except OSError:
                        pass
            raise
        if self.figures_in_save:
            self.save_figures(out)
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "Result":
        """Load and validate a result saved by :meth:`save`."""
        return load_result(directory, expected=cls)


def content_hash(payload: Mapping[str, Any]) -> str:
    """SHA-256 of a result payload's canonical JSON, without its own ``content_sha256`` key."""
    body = {k: v for k, v in payload.items() if k != "content_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _is_scalarish(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool)) or v is None or (
        isinstance(v, (list, dict)) and len(json.dumps(v, default=str)) < 4000
    )


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.dtype):
        return str(obj).replace("torch.", "")
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    fields: list[str] = []
    for r in rows:
        fields.extend(k for k in r if k not in fields)
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def load_result(directory: str | Path, expected: type[Result] | None = None, *,
                types: Mapping[str, type[Result]] | None = None) -> Result:
    """Load any saved result, validating its JSON and tensor specs.

    Parameters
    ----------
    directory
        A directory written by :meth:`Result.save`.
    expected
        When given, the stored kind must be this class's kind (or a subclass's).
    types
        ``{kind: Result subclass}`` to choose the class from, e.g.
        :func:`depthsel.api.result_types`; see the module docstring for the order.
    """
    d = Path(directory)
    jpath, tpath = d / _JSON, d / _TENSORS
    if not jpath.is_file():
        raise ResultFormatError(f"{str(d)!r} holds no {_JSON}; is it a depthsel result directory?")
    if jpath.is_symlink() or tpath.is_symlink():
        raise ResultFormatError(f"{str(d)!r}: {_JSON} or {_TENSORS} is a symlink; copy the files instead")
    from .safeio import read_json_bounded

    payload = read_json_bounded(jpath)
    if not isinstance(payload, Mapping) or payload.get("format") != "depthsel-result":
        raise ResultFormatError(f"{str(jpath)!r} is not a depthsel result")
    version = payload.get("format_version")
    if version == 1:
        raise ResultFormatError(
            f"{str(jpath)!r} has format version 1, written before results carried integrity "
            "hashes; re-run the analysis to save it in the current format"
        )
    if version != FORMAT_VERSION:
        raise ResultFormatError(
            f"{str(jpath)!r} has format version {version!r}; this depthsel reads {FORMAT_VERSION}"
        )
    for key, typ in (("kind", str), ("config", dict), ("meta", dict), ("data", dict),
                     ("tensor_specs", dict)):
        if not isinstance(payload.get(key), typ):
            raise ResultFormatError(f"{str(jpath)!r}: field {key!r} must be a {typ.__name__}")
    kind = payload["kind"]
    cls = _result_class(kind, expected, types)
    if expected is not None and expected is not Result and not issubclass(cls, expected):
        raise ResultFormatError(f"{str(d)!r} holds a {kind!r} result, not {expected.kind!r}")
    specs = payload["tensor_specs"]
    tensors = _load_tensors(specs, d, jpath, tpath)
    _verify_hashes(payload, jpath, tpath if specs else None)
    obj = cls(tensors=tensors, data=dict(payload["data"]), config=dict(payload["config"]),
              meta=dict(payload["meta"]))
    return obj


def _load_tensors(specs: Mapping[str, Any], d: Path, jpath: Path, tpath: Path) -> dict[str, torch.Tensor]:
    """The tensors file, checked against the specs the JSON recorded at save time."""
    tensors: dict[str, torch.Tensor] = {}
    for name, spec in specs.items():
        if (not isinstance(spec, Mapping) or not isinstance(spec.get("shape"), list)
                or not all(isinstance(s, int) and s >= 0 for s in spec["shape"])
                or not isinstance(spec.get("dtype"), str)):
            raise ResultFormatError(
                f"{str(jpath)!r}: tensor spec of {name!r} must be {{'shape': [ints], 'dtype': str}}, "
                f"got {spec!r}; the file is corrupt"
            )
    if specs:
        if not tpath.is_file():
            raise ResultFormatError(f"{str(d)!r} lacks {_TENSORS}; the result is incomplete")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(tpath))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ResultFormatError(f"{str(tpath)!r} is corrupt ({exc})") from exc
    for name, spec in specs.items():
        t = tensors.get(name)
        if t is None:
            raise ResultFormatError(f"tensor {name!r} is listed in {_JSON} but missing")
        if list(t.shape) != list(spec.get("shape", [])) or str(t.dtype).replace("torch.", "") != spec.get("dtype"):
            raise ResultFormatError(
                f"tensor {name!r} is {list(t.shape)} {t.dtype}, but {_JSON} says "
                f"{spec.get('shape')} {spec.get('dtype')}: the files do not belong together"
            )
    extra = set(tensors) - set(specs)
    if extra:
        raise ResultFormatError(f"{_TENSORS} holds tensors not listed in {_JSON}: {sorted(extra)}")
    return tensors


def _result_class(kind: str, expected: type[Result] | None,
                  types: Mapping[str, type[Result]] | None) -> type[Result]:
    """The class for a stored ``kind``; imports and loads nothing (see the module docstring)."""
    if expected is not None and expected.kind == kind:
        return expected
    chosen = (types or {}).get(kind)
    if chosen is not None:
        if not (isinstance(chosen, type) and issubclass(chosen, Result) and chosen.kind == kind):
            raise ResultFormatError(f"types[{kind!r}] must be a Result subclass with kind {kind!r}, got {chosen!r}")
        return chosen
    return _REGISTRY.get(kind, Result)


def _verify_hashes(payload: Mapping[str, Any], jpath: Path, tpath: Path | None) -> None:
    """Both hashes are mandatory: a result that cannot prove it is intact is refused."""
    expected = payload.get("tensors_sha256")
    if tpath is not None:
        if not isinstance(expected, str):
            raise ResultFormatError(
                f"{str(jpath)!r} records no tensors_sha256, so {_TENSORS} cannot be verified; "
                "re-run the analysis"
            )
        if hashlib.sha256(tpath.read_bytes()).hexdigest() != expected:
            raise ResultFormatError(
                f"{str(tpath)!r} does not match the hash recorded in {_JSON}: the files come from "
                "different saves (an interrupted overwrite?); re-run the analysis"
            )
    recorded = payload.get("content_sha256")
    if not isinstance(recorded, str):
        raise ResultFormatError(f"{str(jpath)!r} records no content_sha256; re-run the analysis")
    if content_hash(payload) != recorded:
        raise ResultFormatError(
            f"{str(jpath)!r} was edited after it was saved (its content no longer matches its "
            "content_sha256); re-run the analysis instead of editing results"
        )
