"""Checks of the places a command writes to, made before any work starts.

Rules of this module:

- A path the user named that cannot be written is found out before anything runs, with the
  reason and what to do (``UsageError``: exit code 64, nothing was run).
- An existing run folder is never overwritten silently: ``run`` and ``profile`` refuse a
  folder that holds files unless ``force``; with ``force`` the files a run writes there are
  removed first (other files are left alone), so nothing of the old run survives to be read
  as part of the new one.
- Writability is probed by creating the folder and a file in it, not by reading permission
  bits: ``/proc``, read-only mounts and full disks look writable to ``os.access``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.exit_codes import UsageError

__all__ = ["RUN_FOLDER_FILES", "PreparedFolder", "check_writable_file", "prepare_folder"]

RUN_FOLDER_FILES = ("meta.json", "stages.csv", "runs.csv", "spans.csv", "profile_stages.csv",
                    "report.html", "report.md", "figures", "profiles")
"""What ``run``/``profile`` write into a run folder (removed first with ``--force``)."""


@dataclass(frozen=True)
class PreparedFolder:
    path: Path
    created: bool  # this check made the folder: remove it again if nothing is written

    def discard_if_empty(self) -> None:
        """Remove the folder if this check created it and nothing was written in it."""
        if self.created:
            with contextlib.suppress(OSError):
                self.path.rmdir()


def _probe(folder: Path, what: str) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".stagecost-probe-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise UsageError(f"{what} {folder} cannot be written ({e.strerror or e}); choose "
                         "another place") from None


def prepare_folder(path: Path, *, what: str = "-o", refuse_existing: bool = False,
                   force: bool = False) -> PreparedFolder:
    """Make sure ``path`` is a folder this process can write; create it if needed.

    With ``refuse_existing``, a folder that already holds files is refused unless ``force``,
    which removes the files of ``RUN_FOLDER_FILES`` from it. Raises ``UsageError`` naming the
    path, the problem and the fix.
    """
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path} is a file, not a folder; choose a folder")
    existed = path.is_dir()
    if existed and refuse_existing and any(path.iterdir()):
        if not force:
            kind = "a run" if (path / "meta.json").exists() else "files"
            raise UsageError(f"{what} {path} already holds {kind}; pass --force to replace "
                             "it, or choose another folder")
        for name in RUN_FOLDER_FILES:
            old = path / name
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            elif old.exists() or old.is_symlink():
                old.unlink()
    if not existed:
        try:
            path.mkdir(parents=True)
        except OSError as e:
            raise UsageError(f"{what} {path} cannot be created ({e.strerror or e}); choose "
                             "another place") from None
    _probe(path, what)
    return PreparedFolder(path, created=not existed)


def check_writable_file(path: Path, what: str) -> None:
    """``path`` (a file that may not exist yet) can be created or written; its folder is
    created if needed. Raises ``UsageError`` otherwise."""
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder; name a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{what} {path}: its folder cannot be created ({e.strerror or e})"
                         ) from None
    if path.exists():
        if not os.access(path, os.W_OK):
            raise UsageError(f"{what} {path} is not writable; choose another file")
        return
    _probe(path.parent, what)
