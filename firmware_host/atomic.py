"""Atomic file writes: write to a temporary file beside the target, then rename.

An interrupted or failed write (Ctrl-C, full disk) never leaves a half-written artifact, and a
file that existed before stays intact. A whole folder is built the same way (:func:`staged_dir`):
in a hidden sibling, swapped in only when complete, with Ctrl-C held back for the two renames of
the swap so that an interrupt can never leave neither the old nor the new folder in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from firmware_host.errors import EdgecellError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    ``suffix`` defaults to the target's suffix, so libraries that pick a format from the file
    name (Keras, matplotlib) still do the right thing.
    """
    target = Path(path)
    folder = target.parent
    _ensure_folder(folder)
    tmp_path: Path | None = None
    try:
        with _interrupts_held():  # Ctrl-C between creating the temporary file and owning it would leak it
            tmp_path = _new_temp(folder, f".{target.name}.", ".tmp" + (suffix if suffix is not None else target.suffix), folder=False)
        yield tmp_path
        os.replace(tmp_path, target)
    except OSError as exc:
        if tmp_path is not None:
            _unlink(tmp_path)
        raise EdgecellError(f"cannot write file ({exc.strerror or exc})", target) from None
    except BaseException:
        if tmp_path is not None:
            _unlink(tmp_path)
        raise


def _new_temp(parent: Path, prefix: str, suffix: str = "", folder: bool = False) -> Path:
    """A new temporary file or folder in ``parent``, with the modes a shared artifact should have.

    ``mkstemp``/``mkdtemp`` make 0600/0700; results are meant to be copied and shared.
    """
    try:
        if folder:
            made = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent)
        else:
            fd, made = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=parent)
            os.close(fd)
    except OSError as exc:
        raise EdgecellError(f"cannot write here ({exc.strerror or exc})", parent) from None
    with contextlib.suppress(OSError):  # still usable with the narrower mode
        os.chmod(made, (0o777 if folder else 0o666) & ~_umask())
    return Path(made)


def _ensure_folder(folder: Path) -> None:
    """Create ``folder`` and its parents; a file standing in the way is named as such.

    (``mkdir`` would only say "File exists" or "Not a directory".)
    """
    for anc in (folder, *folder.parents):
        if anc.is_dir():
            break
        if anc.exists() or anc.is_symlink():
            what = "is a file, not a folder" + ("" if anc == folder else f", so {folder} cannot be created in it")
            raise EdgecellError(what, anc)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgecellError(f"cannot create this folder ({exc.strerror or exc})", folder) from None


def check_writable(path: str | os.PathLike) -> None:
    """Fail now, with one line naming the folder, if ``path`` could not be written later.

    Creates the folder if needed and a temporary file in it (removed at once), so a long job
    (classifying thousands of images) does not end with results it cannot save.
    """
    folder = Path(path).parent
    _ensure_folder(folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".check", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise EdgecellError(f"cannot write here ({exc.strerror or exc})", folder) from None
    if Path(path).is_dir():
        raise EdgecellError("is a folder; give a file name", path)


def _umask() -> int:
    try:  # Linux: read it, rather than set-and-restore (which briefly affects every thread)
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unlink(p: Path) -> None:
    with contextlib.suppress(OSError):
        p.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    # surrogateescape: a file name that is not valid UTF-8 (a Latin-1 name from an old camera)
    # is written back as the very bytes it has on disk, instead of failing the whole write.
    return write_bytes(path, text.encode("utf-8", "surrogateescape"))


def json_text(obj, indent: int | None = 2) -> str:
    """``obj`` as JSON text (no trailing newline): numpy numbers and arrays, enums and paths included.

    The one JSON encoding of every file and stdout report edgecell writes.
    """
    return json.dumps(obj, indent=indent, default=_json_default)


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json_text(obj) + "\n")


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


def _check_target_folder(target: Path, marker: str | None) -> None:
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise EdgecellError("exists and is not a folder", target)
        if marker and any(target.iterdir()) and not (target / marker).exists():
            raise EdgecellError(f"exists, is not empty and is not an edgecell folder (no {marker}); choose another output folder", target)
    _ensure_folder(target.parent)


def check_stageable(target: str | os.PathLike, marker: str | None = None) -> None:
    """Fail now, with one line, if :func:`staged_dir` could not later write ``target``.

    The same checks as ``staged_dir`` (a file or a foreign folder in the way, a parent that cannot
    be created) plus creating and removing a staging folder, so a long job (training) is refused
    before it starts rather than after.
    """
    target = Path(target)
    _check_target_folder(target, marker)
    with _interrupts_held():
        probe = _new_temp(target.parent, f".{target.name}.check-", folder=True)
        with contextlib.suppress(OSError):
            probe.rmdir()


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike, marker: str | None = None) -> Iterator[Path]:
    """Build a whole folder in a hidden temporary sibling, then swap it in place of ``target``.

    Until the swap, an existing ``target`` is untouched, so an interrupted run (Ctrl-C, full
    disk, crash) leaves the previous results intact and no half-written folder behind.
    ``marker``: a file that must exist in a non-empty existing ``target`` for it to be replaced,
    so a user's unrelated folder is never overwritten.

    The swap is two renames (old folder aside, new one in place); Ctrl-C is held back during
    them, and if the second fails the previous folder is put back. Errors raised inside the
    block that name a file in the staging folder are re-worded to name the final path.
    """
    target = Path(target)
    parent = target.parent
    _check_target_folder(target, marker)
    tmp: Path | None = None
    try:
        with _interrupts_held():  # Ctrl-C between creating the staging folder and owning it would leak it
            tmp = _new_temp(parent, f".{target.name}.tmp-", folder=True)
        yield tmp
    except EdgecellError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            _retarget(exc, tmp, target)
        raise
    except OSError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise EdgecellError(f"cannot write output folder ({exc.strerror or exc})", target) from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        with _interrupts_held():
            _swap(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise EdgecellError(f"cannot write output folder ({exc.strerror or exc}); the previous one is unchanged", target) from None


def _swap(tmp: Path, target: Path) -> None:
    """Put ``tmp`` where ``target`` is; on failure the previous ``target`` is back in place."""
    if not target.exists():
        os.replace(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    try:
        os.replace(target, old / "prev")
    except OSError:
        shutil.rmtree(old, ignore_errors=True)
        raise
    try:
        os.replace(tmp, target)
    except OSError as exc:
        try:
            os.replace(old / "prev", target)
        except OSError:
            raise EdgecellError(f"cannot write output folder ({exc.strerror or exc}); the previous one was moved to {old / 'prev'}", target) from None
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _retarget(exc: EdgecellError, tmp: Path, target: Path) -> None:
    """Make an error about ``tmp/x`` name ``target/x`` (the staging folder is gone by now)."""
    if exc.path is None:
        return
    try:
        rel = Path(exc.path).relative_to(tmp)
    except ValueError:
        return
    exc.path = os.fspath(target / rel)
    exc.args = (f"{exc.path}: {exc.reason}",)


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold back SIGINT (Ctrl-C) and SIGTERM (``kill``, a service stop) for the duration.

    A signal that arrives meanwhile is delivered afterwards, as it would have been. Only
    possible in the main thread; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, object] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
    except (ValueError, OSError):  # pragma: no cover - not the main interpreter
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for sig in dict.fromkeys(caught):
        handler = previous[sig]
        if callable(handler):
            handler(sig, None)
        elif handler == signal.SIG_DFL:
            if sig == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), sig)  # the default action (terminate), now that the swap is done
