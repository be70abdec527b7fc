"""A run directory as a unit: one writer at a time, a manifest, nothing overwritten by accident.

Every command that writes a directory (``train``, ``analyze``/``dissect``,
``report``) goes through :func:`open_run`:

* an exclusive ``fcntl.flock`` on ``.depthsel.lock`` inside the directory is
  held for the whole job, so a second writer fails at once with
  :class:`~depthsel.errors.RunDirError` instead of interleaving its files;
* hidden ``.NAME.*.tmp`` files that a killed :func:`~depthsel.checkpoints.atomic_write`
  left behind are removed once the lock is held (no other writer can own them);
* :meth:`RunDir.refuse_overwrite` stops a job from replacing files that
  already exist unless the user said ``--force`` (or ``--resume``);
* :meth:`RunDir.write_manifest` records the configuration, versions and the
  SHA-256 of every file the job owns in ``manifest.json``, and
  :meth:`RunDir.verify_manifest` checks them.

Reading files depthsel did not write goes through :mod:`depthsel.safeio`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoints import atomic_write_bytes
from .errors import ResultFormatError, RunDirError
from .safeio import read_json_bounded

__all__ = ["RunDir", "open_run", "is_locked", "sha256_file", "LOCK_NAME", "MANIFEST_NAME", "CONFIG_NAME"]

LOCK_NAME = ".depthsel.lock"
CONFIG_NAME = "config.json"
_MISSING = object()
MANIFEST_NAME = "manifest.json"
# atomic_write names its temporary files ".<final name>.<random>.tmp".
_TMP = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class RunDir:
    """A locked run directory (create it with :func:`open_run`).

    Attributes
    ----------
    path
        The directory.
    created
        Whether :func:`open_run` created it (an unused new directory is removed again).
    cleaned
        Stale temporary files removed when the lock was taken.
    """

    path: Path
    created: bool = False
    cleaned: list[str] = field(default_factory=list)

    def existing(self, names: Iterable[str]) -> list[str]:
        """Which of ``names`` already exist in the directory."""
        return [n for n in names if (self.path / n).exists() or (self.path / n).is_symlink()]

    def refuse_overwrite(self, names: Iterable[str], *, force: bool, what: str, hint: str) -> None:
        """Raise :class:`RunDirError` when one of ``names`` exists and ``force`` is off.

        Parameters
        ----------
        names
            Files the job is about to write.
        force
            The user's ``--force``.
        what
            What the directory holds, for the message (``"a dissection result"``).
        hint
            How to proceed besides ``--force`` (e.g. ``"choose another --out"``).
        """
        found = self.existing(names)
        if found and not force:
            raise RunDirError(
                f"{str(self.path)!r} already holds {what} ({', '.join(found)}); {hint}, "
                "or pass --force to overwrite it"
            )

    def owned_files(self, patterns: Iterable[str]) -> list[str]:
        """Names of the files in the directory matching any of the glob ``patterns``."""
        return sorted({p.name for pat in patterns for p in self.path.glob(pat)})

    def begin(self, config: Mapping[str, Any], *, resume: bool, overwrite: bool, owned: Iterable[str],
              may_change: Iterable[str] = (), what: str = "a run",
              normalize: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None) -> bool:
        """Start or resume a job here; returns whether a stored run is being resumed.

        Resuming compares the stored ``config.json`` with ``config`` and refuses a
        mismatch, naming the keys, *before* anything is written. Starting over
        removes the ``owned`` files first (refused unless ``overwrite``), so no old
        checkpoint can later be resumed under the new config. Either way the new
        ``config.json`` and a manifest are written last. ``normalize`` rebuilds the
        stored config through the caller's schema first, so that an option added
        since the run was written compares as its default (the old behaviour), not
        as a change.
        """
        patterns = list(owned)
        stored_path = self.path / CONFIG_NAME
        if resume and stored_path.is_file():
            self._check_stored(stored_path, config, set(may_change), normalize)
            resuming = True
        else:
            found = self.owned_files(patterns)
            if found and not overwrite:
                raise RunDirError(
                    f"{str(self.path)!r} already holds {what} ({', '.join(found)}); pass --resume to "
                    "continue it, --force to start over, or choose another name"
                )
            for name in found:
                (self.path / name).unlink()
            resuming = False
        atomic_write_bytes(stored_path, json.dumps(dict(config), indent=2, default=str).encode())
        self.write_manifest("run", config, [CONFIG_NAME])
        return resuming

    def _check_stored(self, stored_path: Path, config: Mapping[str, Any], may_change: set[str],
                      normalize: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None) -> None:
        from .errors import ConfigError, DepthselError

        problems = self.verify_manifest()
        if any(p.startswith(CONFIG_NAME) for p in problems):
            raise RunDirError(f"{str(stored_path)!r} was edited after the run wrote it; restore it or "
                              "start over with --force")
        stored = read_json_bounded(stored_path)
        if not isinstance(stored, dict):
            raise ResultFormatError(f"{str(stored_path)!r} is not a JSON object; start over with --force")
        if normalize is not None:
            try:
                stored = json.loads(json.dumps(dict(normalize(stored)), default=str))
            except (DepthselError, TypeError, ValueError):
                pass  # not of the caller's schema: compared as stored, so the difference is named
        old, new = _flatten(stored), _flatten(json.loads(json.dumps(dict(config), default=str)))
        changed = sorted(k for k in set(old) | set(new)
                         if old.get(k, _MISSING) != new.get(k, _MISSING) and k.split(".")[0] not in may_change)
        if changed:
            shown = "; ".join(f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}" for k in changed[:6])
            more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
            raise ConfigError(
                f"cannot resume {str(self.path)!r} with a different configuration ({shown}{more}); "
                "use the run's settings, --force to start over, or another name"
            )

    # -------------------------------------------------------------- manifest
    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, or ``None`` when the directory has none."""
        path = self.path / MANIFEST_NAME
        if not path.is_file():
            return None
        data = read_json_bounded(path)
        if not isinstance(data, dict) or data.get("format") != "depthsel-run":
            raise ResultFormatError(f"{str(path)!r} is not a depthsel run manifest; remove it or use --force")
        return data

    def write_manifest(self, kind: str, config: Mapping[str, Any], files: Iterable[str]) -> Path:
        """Record ``config``, versions and the SHA-256 of ``files`` (written atomically, last)."""
        from .results import provenance

        owned = sorted({str(f) for f in files if (self.path / f).is_file() and str(f) != MANIFEST_NAME})
        payload = {
            "format": "depthsel-run",
            "format_version": 1,
            "kind": kind,
            "config": dict(config),
            "versions": {k: v for k, v in provenance().items() if k.endswith("_version")},
            "files": {name: sha256_file(self.path / name) for name in owned},
        }
        text = json.dumps(payload, indent=2, sort_keys=True, default=str)
        return atomic_write_bytes(self.path / MANIFEST_NAME, text.encode())

    def verify_manifest(self) -> list[str]:
        """Problems found checking every file listed in the manifest (empty: all good)."""
        manifest = self.read_manifest()
        if manifest is None:
            return []
        files = manifest.get("files")
        if not isinstance(files, dict):
            return [f"{MANIFEST_NAME} lists no files"]
        problems = []
        for name, digest in sorted(files.items()):
            target = self.path / str(name)
            if target.is_symlink() or not target.is_file():
                problems.append(f"{name} is missing or not a regular file")
            elif sha256_file(target) != digest:
                problems.append(f"{name} changed since it was written (SHA-256 differs from {MANIFEST_NAME})")
        return problems

    # ----------------------------------------------------------------- tidy
    def clean_stale_tmp(self) -> list[str]:
        """Remove temporary files a killed writer left; call only while holding the lock."""
        removed = []
        for entry in os.scandir(self.path):
            if _TMP.match(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(entry.name)
        return sorted(removed)


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


@contextmanager
def open_run(path: str | os.PathLike[str], *, create: bool = True) -> Iterator[RunDir]:
    """Hold an exclusive lock on the run directory ``path`` for the ``with`` block.

    Parameters
    ----------
    path
        The run directory; created when missing and ``create`` is on.
    create
        Create the directory (and parents) when it does not exist.

    Raises
    ------
    RunDirError
        Another process holds the lock, or ``path`` is not a directory.
    """
    run = Path(path)
    created = not run.exists()
    if run.exists() and not run.is_dir():
        raise RunDirError(f"{str(run)!r} exists and is not a directory; choose another output path")
    if created:
        if not create:
            raise RunDirError(f"run directory {str(run)!r} does not exist")
        run.mkdir(parents=True, exist_ok=True)
    lock_path = run / LOCK_NAME
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunDirError(
                f"{str(run)!r} is in use by another depthsel process{_holder(fd)}; wait for it to "
                "finish, or write to another directory"
            ) from None
        # The previous holder may have removed the lock file after we opened it: then
        # our lock is on an orphan inode and a third process could lock a new file.
        if not lock_path.exists() or os.stat(lock_path).st_ino != os.fstat(fd).st_ino:
            raise RunDirError(f"{str(run)!r} was being released by another process; run the command again")
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        rd = RunDir(path=run, created=created)
        rd.cleaned = rd.clean_stale_tmp()
        try:
            yield rd
        finally:
            _release(rd, lock_path)
    finally:
        os.close(fd)


def _release(rd: RunDir, lock_path: Path) -> None:
    # A directory this job created and left empty (the job failed) is removed, so a
    # failed command leaves nothing behind; the lock file goes first, still locked.
    if rd.created and {e.name for e in os.scandir(rd.path)} <= {LOCK_NAME}:
        lock_path.unlink(missing_ok=True)
        try:
            rd.path.rmdir()
        except OSError:
            pass


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def is_locked(path: str | os.PathLike[str]) -> bool:
    """Whether a process holds the run directory's lock right now (a job is writing it)."""
    lock_path = Path(path) / LOCK_NAME
    if not lock_path.is_file() or lock_path.is_symlink():
        return False
    fd = os.open(lock_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops our shared lock too
    return False
