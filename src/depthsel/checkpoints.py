"""Safe weight loading and atomic writing.

Pickle is never loaded implicitly. ``.safetensors`` files are read as such;
``.pth``/``.pt``/``.tar`` files go through ``torch.load(weights_only=True)``,
which refuses arbitrary objects. A checkpoint that holds a whole pickled module
(FastDepth's releases do) is refused with an explanation unless the caller
passes ``trust_pickle=True``, which means: *I trust whoever made this file with
running code on my machine*.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, ResultFormatError, UntrustedFileError

__all__ = [
    "load_state_dict",
    "load_weights",
    "save_state_dict",
    "atomic_write",
    "atomic_write_bytes",
    "strip_prefix",
    "check_weights",
    "write_checkpoint_pair",
    "read_checkpoint_pair",
    "optimizer_tensors",
    "load_optimizer_tensors",
]

# Keys under which training scripts commonly nest the weights.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Write a file atomically: temporary file in the same folder, fsync, rename.

    Parameters
    ----------
    path
        Final destination.
    write
        Called with the temporary path; must create the file there.

    Returns
    -------
    Path
        The final path. If ``write`` raises, nothing appears at ``path``.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        # fsync the directory so the rename itself survives a crash.
        try:
            dir_fd = os.open(final.parent, os.O_RDONLY)
        except OSError:
            dir_fd = None
        if dir_fd is not None:
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if type(exc).__name__ == "SafetensorError":
            # safetensors reports a full disk as its own error type; the user's to fix.
            detail = " ".join(str(exc).split())[:300]
            raise CheckpointError(f"could not write {str(final)!r} ({detail}); check free disk space "
                                  "and permissions: the previous file, if any, is unchanged") from exc
        raise
    return final


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Remove a DataParallel/DDP ``module.`` prefix when every key has it."""
    keys = list(state)
    if keys and all(k.startswith(prefix) for k in keys):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def _unnest(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(
                isinstance(v, torch.Tensor) for v in inner.values()
            ):
                return inner
            if isinstance(inner, nn.Module):
                return inner
    return obj


def _looks_like_pickle(path: Path) -> bool:
    """Whether the file starts with a pickle PROTO opcode (protocol 2 to 5)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _is_pickle_refusal(exc: Exception, path: Path | None = None) -> bool:
    text = str(exc)
    if "Unsupported operand" in text and (path is None or not _looks_like_pickle(path)):
        # The weights-only unpickler met an opcode it does not know in a file that is
        # no pickle at all (random or corrupt bytes). A real pickle of protocol 4/5
        # (FRAME opcodes) gives the same message and is treated as a refusal.
        return False
    return isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text or (
        "weights_only" in text
    )


def load_state_dict(
    path: str | os.PathLike[str], *, trust_pickle: bool = False, map_location: str = "cpu"
) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors or PyTorch checkpoint, safely.

    Parameters
    ----------
    path
        ``.safetensors``, or a ``torch.save`` file (``.pth``, ``.pt``, ``.tar``, ...).
    trust_pickle
        Allow a full unpickle (arbitrary code execution) when the file holds a
        pickled module or other objects. Never on by default.
    map_location
        Device to load tensors onto.

    Returns
    -------
    dict
        Tensor state dict, with a uniform ``module.`` prefix removed and common
        nesting (``{"state_dict": ...}``, ``{"model": ...}``) unwrapped.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist: check the path")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(p), device=map_location)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"{str(p)!r} is not a readable safetensors file ({exc}); re-export it"
            ) from exc
        return strip_prefix(state)
    try:
        obj = torch.load(str(p), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types here
        # Garbage and truncated files raise EOFError, RuntimeError, struct.error,
        # IndexError, ...: anything that is not a refusal to unpickle is corruption.
        if not _is_pickle_refusal(exc, p):
            detail = ("bytes that are no pickle opcode" if "Unsupported operand" in str(exc)
                      else (str(exc).splitlines() or [""])[0])
            raise CheckpointError(
                f"{str(p)!r} is not a readable PyTorch checkpoint ({type(exc).__name__}: "
                f"{detail}); is it truncated or corrupt?"
            ) from exc
        if not trust_pickle:
            raise UntrustedFileError(
                f"{str(p)!r} contains pickled Python objects (for example a whole nn.Module), "
                "and unpickling it would run code from the file. If you trust its author, "
                "pass trust_pickle=True (CLI: --trust-pickle), then save it as safetensors "
                "with `depthsel convert`."
            ) from exc
        warnings.warn(
            f"unpickling {str(p)!r} with trust_pickle=True: this runs code from the file",
            RuntimeWarning,
            stacklevel=2,
        )
        try:
            obj = torch.load(str(p), map_location=map_location, weights_only=False)
        except Exception as exc2:  # noqa: BLE001 - a full unpickle can raise anything
            raise CheckpointError(
                f"{str(p)!r} could not be unpickled ({type(exc2).__name__}: "
                f"{str(exc2).splitlines()[0] if str(exc2) else ''}); is it a PyTorch checkpoint?"
            ) from exc2
    obj = _unnest(obj)
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{str(p)!r} holds no tensor state dict (found {type(obj).__name__}); "
            "save model.state_dict() instead"
        )
    return strip_prefix({str(k): v for k, v in obj.items()})


def load_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    strict: bool = True,
    trust_pickle: bool = False,
) -> nn.Module:
    """Load a checkpoint into ``model``; mismatches raise :class:`CheckpointError`.

    Parameters
    ----------
    model
        The network to fill.
    path
        Checkpoint path (see :func:`load_state_dict`).
    strict
        Require the key sets to match exactly.
    trust_pickle
        See :func:`load_state_dict`.
    """
    state = load_state_dict(path, trust_pickle=trust_pickle)
    target = getattr(model, "module", model)
    check_weights(state, target.state_dict(), path)
    try:
        target.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = " ".join(line.strip() for line in first[:3])[:500]
        raise CheckpointError(
            f"{str(path)!r} does not fit {type(target).__name__}: {detail}. "
            "Check the model name and width, or pass strict=False to load a subset."
        ) from exc
    return model


def check_weights(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                  path: str | os.PathLike[str]) -> None:
    """Refuse weights that would load silently but wrong.

    ``load_state_dict`` copies an int32 tensor into a float parameter without a
    word, and NaN weights give NaN activations that later read as "no
    selectivity". Both are refused here, naming the first offending tensor.

    Raises
    ------
    CheckpointError
        A tensor whose model counterpart is floating point is not, or a floating
        point tensor holds NaN or infinity.
    """
    for name, value in state.items():
        want = expected.get(name)
        if want is not None and want.is_floating_point() and not value.is_floating_point():
            got, need = (str(t.dtype).replace("torch.", "") for t in (value, want))
            raise CheckpointError(
                f"{str(path)!r}: tensor {name!r} is {got}, but the model's is {need}; "
                "weights must be floating point (re-export them)"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                f"{str(path)!r}: tensor {name!r} holds {bad} NaN or infinite value(s); the checkpoint is "
                "broken (a diverged run?): use an earlier one"
            )


def save_state_dict(
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Atomically write a state dict as safetensors (shared storage is cloned)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().clone().cpu() for k, v in state.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


CHECKPOINT_PAIR_VERSION = 1


def write_checkpoint_pair(json_path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor],
                          meta: Mapping[str, Any], tag: int) -> Path:
    """Atomically write a resumable checkpoint: a JSON that names its own tensors file.

    The tensors go to ``<stem>.<tag>.safetensors`` first; the JSON (with
    ``"tensors"`` and ``"version"`` added) is written last. A crash between the
    two writes leaves the previous JSON and the previous tensors file, both
    still on disk, in force: the pair on disk always matches. Only after the
    JSON is in place are older tensors files of the same stem deleted.

    Parameters
    ----------
    json_path
        The checkpoint's JSON path (e.g. ``run/checkpoint.json``).
    tensors
        Tensors to store (cloned to contiguous CPU copies).
    meta
        JSON-serialisable description.
    tag
        A non-negative integer that changes between successive checkpoints
        (a step or an image count), so that the new tensors file never
        overwrites the one the current JSON names.
    """
    from safetensors.torch import save_file

    jpath = Path(json_path)
    stem = jpath.with_suffix("").name
    tname = f"{stem}.{int(tag):010d}.safetensors"
    data = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    atomic_write(jpath.parent / tname, lambda tmp: save_file(data, str(tmp)))
    payload = {**dict(meta), "tensors": tname, "version": CHECKPOINT_PAIR_VERSION}
    atomic_write_bytes(jpath, json.dumps(payload, default=str).encode())
    prefix = stem + "."
    for old in jpath.parent.glob(f"{stem}.*.safetensors"):
        middle = old.name[len(prefix):-len(".safetensors")]
        if old.name != tname and middle.isdigit():
            old.unlink(missing_ok=True)
    return jpath


def read_checkpoint_pair(json_path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Read what :func:`write_checkpoint_pair` wrote; ``None`` when there is no checkpoint.

    Raises
    ------
    ResultFormatError
        The JSON is unreadable, is not a checkpoint description, or names a
        tensors file that is missing or outside its folder.
    """
    from safetensors.torch import load_file

    jpath = Path(json_path)
    if not jpath.is_file():
        return None
    try:
        meta = json.loads(jpath.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("tensors"), str):
            raise ValueError("the JSON does not name a tensors file")
        # Pairs written before the version field existed have the same layout.
        if int(meta.get("version", CHECKPOINT_PAIR_VERSION)) != CHECKPOINT_PAIR_VERSION:
            raise ValueError(f"checkpoint format version {meta.get('version')!r} is not "
                             f"{CHECKPOINT_PAIR_VERSION}")
        tpath = jpath.parent / meta["tensors"]
        if Path(meta["tensors"]).name != meta["tensors"] or not tpath.is_file():
            raise FileNotFoundError(f"its tensors file {meta['tensors']!r} is missing")
        tensors = load_file(str(tpath))
    except Exception as exc:  # noqa: BLE001 - every failure is the same advice
        raise ResultFormatError(f"checkpoint {str(jpath)!r} is unreadable ({exc}); delete it to start over") from exc
    return tensors, meta


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state as flat tensors (``opt.<param>.<key>``) and JSON (groups, scalars), no pickle."""
    state = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor],
                           meta: Mapping[str, Any]) -> None:
    """Restore what :func:`optimizer_tensors` gave into ``opt``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
