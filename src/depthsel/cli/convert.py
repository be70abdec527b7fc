"""``depthsel convert CKPT OUT.safetensors``: re-save any checkpoint as safetensors.

The point is to unpickle a legacy checkpoint at most once, knowingly, and use
the safe format from then on. Without ``--trust-pickle`` only checkpoints that
``torch.load(weights_only=True)`` accepts are read.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from .. import __version__
from ..checkpoints import load_state_dict, save_state_dict
from .errors import CliError, handle_errors
from .output import FormatOption, OutputFormat, emit, emit_json, warn

__all__ = ["register", "TRUST_PICKLE_WARNING"]

TRUST_PICKLE_WARNING = (
    "--trust-pickle: {path} will be fully unpickled. Unpickling runs whatever code the file's "
    "author put in it, with your permissions (it can read, change or send your files). Use it only "
    "for files from a source you trust; the safetensors copy written here never needs it again."
)


@handle_errors
def convert(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to read (.pth/.pt/.tar/.safetensors).")],
    out: Annotated[Path, typer.Argument(help="Output file; must end in .safetensors.")],
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle",
                            help="Allow unpickling CKPT (runs code from the file). Only for trusted files.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT if it exists.")] = False,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Convert a PyTorch checkpoint into a safetensors state dict."""
    if out.suffix != ".safetensors":
        raise CliError(f"output {str(out)!r} must end in .safetensors")
    if out.exists() and checkpoint.exists() and out.resolve() == checkpoint.resolve():
        raise CliError("output and input are the same file; choose another output path")
    if out.exists() and not force:
        raise CliError(f"{str(out)!r} exists; pass --force to overwrite it")
    if trust_pickle:
        warn(TRUST_PICKLE_WARNING.format(path=checkpoint))
    with warnings.catch_warnings():
        # The warning above already said it, once and in full.
        warnings.filterwarnings("ignore", message="unpickling .* with trust_pickle=True")
        state = load_state_dict(checkpoint, trust_pickle=trust_pickle)
    if not state:
        raise CliError(f"{str(checkpoint)!r} holds an empty state dict; nothing to convert")
    metadata = {"source": checkpoint.name, "converted_by": f"depthsel {__version__}"}
    path = save_state_dict(state, out, metadata=metadata)
    n_params = int(sum(t.numel() for t in state.values()))
    summary = {"out": str(path), "tensors": len(state), "parameters": n_params,
               "trusted_pickle": trust_pickle}
    if fmt is OutputFormat.json:
        emit_json(summary)
    else:
        emit(fmt, [{"key": k, "value": v} for k, v in summary.items()], ["key", "value"],
             title="converted")


def register(app: typer.Typer) -> None:
    """Add ``convert`` to ``app``."""
    app.command("convert")(convert)
