"""Reading files depthsel did not write: bounded JSON, regular files only, no symlinks.

``depthsel report`` and the result loaders read directories that anyone may
have put files into. :func:`read_json_bounded` limits size and nesting (a
deeply nested file would otherwise exhaust Python's stack), and
:func:`regular_files`/:func:`read_regular` never follow a symlink, so a link
to a secret outside the run directory is never read.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import ResultFormatError

__all__ = ["read_json_bounded", "json_depth", "regular_files", "read_regular", "MAX_JSON_DEPTH"]

MAX_JSON_DEPTH = 64
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` in JSON text (brackets inside strings ignored)."""
    depth = best = 0
    for ch in _NOT_BRACKET.sub("", _STRINGS.sub('""', text)):
        if ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    return best


def read_json_bounded(path: str | os.PathLike[str], *, max_bytes: int = 64 * 1024 * 1024,
                      max_depth: int = MAX_JSON_DEPTH, text: str | None = None) -> Any:
    """Parse a JSON file that may be hostile: bounded size, bounded nesting, one error type.

    Raises
    ------
    ResultFormatError
        The file is too large, nested deeper than ``max_depth``, not UTF-8 or not JSON.
    """
    p = Path(path)
    if text is None:
        size = p.stat().st_size
        if size > max_bytes:
            raise ResultFormatError(f"{str(p)!r} is {size} bytes, over the {max_bytes}-byte limit for JSON")
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ResultFormatError(f"{str(p)!r} is not UTF-8 text ({exc.reason}); the file is corrupt") from exc
    depth = json_depth(text)
    if depth > max_depth:
        raise ResultFormatError(
                f"{str(p)!r} nests JSON {depth} levels deep (limit {max_depth}); it is not a depthsel file"
            )
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ResultFormatError(f"{str(p)!r} is not valid JSON ({exc}); the file is corrupt") from exc


def regular_files(root: str | os.PathLike[str], suffixes: Iterable[str]) -> tuple[list[Path], list[str]]:
    """Regular, non-hidden files under ``root`` with one of ``suffixes``, never following links.

    Returns
    -------
    tuple
        ``(files, skipped)``: the files in sorted order, and ``"rel (reason)"``
        for every matching entry that is a symlink or not a regular file.
    """
    base = Path(root)
    wanted = {s.lower() for s in suffixes}
    files: list[Path] = []
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        here = Path(dirpath)
        for d in list(dirnames):
            if d.startswith(".") or (here / d).is_symlink():
                if not d.startswith("."):
                    skipped.append(f"{(here / d).relative_to(base).as_posix()}/ (symlink, not followed)")
                dirnames.remove(d)
        dirnames.sort()
        for name in sorted(filenames):
            p = here / name
            if name.startswith(".") or p.suffix.lower() not in wanted:
                continue
            rel = p.relative_to(base).as_posix()
            if p.is_symlink():
                skipped.append(f"{rel} (symlink, not followed)")
            elif not p.is_file():
                skipped.append(f"{rel} (not a regular file)")
            else:
                files.append(p)
    return sorted(files), skipped


def read_regular(path: Path, limit: int) -> bytes:
    """Read at most ``limit`` bytes of a regular file, refusing symlinks (``O_NOFOLLOW``).

    Raises
    ------
    ResultFormatError
        ``path`` is a symlink or not a regular file (checked on the open descriptor,
        so swapping the file for a link after listing does not help).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ResultFormatError(f"{str(path)!r} is a symlink; depthsel does not follow it") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ResultFormatError(f"{str(path)!r} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(limit + 1)
    finally:
        os.close(fd)
