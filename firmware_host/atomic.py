"""Atomic file writes: write to a temporary file beside the target, then rename.

An interrupted or failed write (Ctrl-C, full disk) never leaves a half-written artifact, and a
file that existed before stays intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from firmware_host.errors import EdgecellError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    ``suffix`` defaults to the target's suffix, so libraries that pick a format from the file
    name (Keras, matplotlib) still do the right thing.
    """
    target = Path(path)
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + (suffix if suffix is not None else target.suffix), dir=folder)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts are meant to be copied and shared
    except OSError as exc:
        raise EdgecellError(f"cannot write here ({exc.strerror or exc})", folder) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except OSError as exc:
        _unlink(tmp_path)
        raise EdgecellError(f"cannot write file ({exc.strerror or exc})", target) from None
    except BaseException:
        _unlink(tmp_path)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unlink(p: Path) -> None:
    with contextlib.suppress(OSError):
        p.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    import enum

    import numpy as np

    if isinstance(o, enum.Enum):
        return o.value
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike, marker: str | None = None) -> Iterator[Path]:
    """Build a whole folder in a hidden temporary sibling, then swap it in place of ``target``.

    Until the swap, an existing ``target`` is untouched, so an interrupted run (Ctrl-C, full
    disk, crash) leaves the previous results intact and no half-written folder behind.
    ``marker``: a file that must exist in a non-empty existing ``target`` for it to be replaced,
    so a user's unrelated folder is never overwritten.
    """
    import shutil

    target = Path(target)
    parent = target.parent
    if target.exists():
        if not target.is_dir():
            raise EdgecellError("exists and is not a folder", target)
        if marker and any(target.iterdir()) and not (target / marker).exists():
            raise EdgecellError(f"exists, is not empty and is not an edgecell folder (no {marker}); choose another output folder", target)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    except OSError as exc:
        raise EdgecellError(f"cannot write here ({exc.strerror or exc})", parent) from None
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
            os.replace(target, old / "prev")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise EdgecellError(f"cannot write output folder ({exc.strerror or exc})", target) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
