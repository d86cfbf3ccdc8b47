"""Atomic file writes: write to a temporary file beside the target, then rename.

An interrupted or failed write (Ctrl-C, full disk) never leaves a half-written artifact, and a
file that existed before stays intact. A whole folder is built the same way (:func:`staged_dir`):
in a hidden sibling, swapped in only when complete, with Ctrl-C held back for the two renames of
the swap so that an interrupt can never leave neither the old nor the new folder in place.

Where outputs may go (:func:`check_outputs`, the one rule every command applies before it
starts): never onto an input image, a model or its sidecar, nor inside a folder being read; two
outputs never name the same file; ``-`` is stdout (:func:`write_stdout`). A replaced file keeps
its permission bits; a path that names a pipe or a device is written to as a stream, never
replaced; a symbolic link is written through, so the link stays a link.

CSV is written by :func:`csv_writer` / :func:`csv_dict_writer`, which quote every field holding
a comma, a quote, a line feed *or* a carriage return, so that every file name reads back exactly.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import errno
import fnmatch
import json
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from firmware_host.errors import EdgecellError, FolderCreated, LeftOver, os_reason

_WRITTEN: collections.deque[Path] = collections.deque(maxlen=4096)
"""The outputs this process has put in place whole (files renamed, folders swapped in), in order, the latest 4,096: an
interrupt after them must not say that the earlier results are intact (:func:`written_whole`)."""


_WRITTEN_COUNT = [0]
"""How many outputs were put in place since the last ``forget`` (more than :data:`_WRITTEN` keeps)."""


def written_whole(forget: bool = False) -> tuple[list[Path], int]:
    """The outputs put in place since the last ``forget`` (each command starts with one), those still there (the
    latest 4,096), and how many were put in place in all; outputs written inside a staging folder that was then
    swapped in are named by the folder."""
    out = [p for p in dict.fromkeys(_WRITTEN) if os.path.lexists(p)]
    total = max(_WRITTEN_COUNT[0], len(out))
    if forget:
        _WRITTEN.clear()
        _WRITTEN_COUNT[0] = 0
    return out, total


def _put_in_place(path: Path) -> None:
    _WRITTEN.append(path)
    _WRITTEN_COUNT[0] += 1


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    ``suffix`` defaults to the target's suffix, so libraries that pick a format from the file
    name (Keras, matplotlib) still do the right thing. A file that is replaced keeps its
    permission bits. A symbolic link is written through (its target is replaced, the link
    stays). A path naming a pipe or a device (``/dev/null``, a FIFO a reader waits on) is not
    replaced by a regular file: the path itself is yielded, to be written as a stream.
    """
    target = Path(path)
    if is_stream(target):
        try:
            yield target
        except OSError as exc:
            raise EdgecellError(f"cannot write ({os_reason(exc)})", target) from None
        return
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    folder = target.parent
    _ensure_folder(folder, target)
    mode = _existing_mode(target)
    tmp_path: Path | None = None
    try:
        with _interrupts_held():  # Ctrl-C between creating the temporary file and owning it would leak it
            tmp_path = _new_temp(folder, f".{target.name}.", ".tmp" + (suffix if suffix is not None else target.suffix), folder=False)
        if mode is not None:
            with contextlib.suppress(OSError):
                os.chmod(tmp_path, mode)
        yield tmp_path
        raise_if_interrupted()  # a Ctrl-C that Python swallowed while the file was written: it is not done
        os.replace(tmp_path, target)
        _put_in_place(target)
    except OSError as exc:
        if tmp_path is not None:
            _unlink(tmp_path)
        raise_if_interrupted()  # a pipe that Ctrl-C broke (a worker's, the forkserver's) is the interrupt, not this file
        raise EdgecellError(f"cannot write file ({os_reason(exc)})", target) from None
    except BaseException:
        if tmp_path is not None:
            _unlink(tmp_path)
        raise


@contextlib.contextmanager
def file_set(folder: str | os.PathLike, names: Collection[str] = ()) -> Iterator[Path]:
    """Write several files as one result: yield a new staging folder inside ``folder``; on success every file written
    there replaces its namesake in ``folder``, all together (interrupts held for the moves), and any of ``names`` (what
    the set may hold) that this set lacks is removed. An interruption leaves the earlier set whole or the new one,
    never a mix of the two; other files in ``folder`` are left alone."""
    folder = Path(folder)
    _ensure_folder(folder)
    with _interrupts_held():  # Ctrl-C between creating the staging folder and owning it would leak it
        stage = _new_temp(folder, ".edgecell-", ".tmp", folder=True)
    try:
        yield stage
        raise_if_interrupted()
        made = sorted(p.name for p in stage.iterdir())
        with _interrupts_held():
            for name in made:
                target = folder / name
                os.replace(stage / name, Path(os.path.realpath(target)) if target.is_symlink() else target)
                _put_in_place(target)
            for name in set(names) - set(made):
                if (folder / name).is_file():
                    _unlink(folder / name)
    except OSError as exc:
        raise EdgecellError(f"cannot write ({os_reason(exc)})", folder) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def is_stream(path: str | os.PathLike) -> bool:
    """Whether ``path`` exists and is neither a regular file nor a folder (a pipe, a device, a socket)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode))


def _existing_mode(target: Path) -> int | None:
    try:
        st = os.stat(target)
    except OSError:
        return None
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None


def fsync(fh) -> None:
    """``os.fsync`` for a regular file; a pipe or a device cannot be synced and needs not be."""
    fd = fh.fileno()
    if stat.S_ISREG(os.fstat(fd).st_mode):
        os.fsync(fd)


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
        raise EdgecellError(f"cannot write here ({os_reason(exc)})", parent) from None
    with contextlib.suppress(OSError):  # still usable with the narrower mode
        os.chmod(made, (0o777 if folder else 0o666) & ~_umask())
    return Path(made)


def _ensure_folder(folder: Path, for_path: Path | None = None) -> None:
    """Create ``folder`` and its parents; a file standing in the way is named as such, with the output (``for_path``,
    in ``folder``) it keeps from being written.

    (``mkdir`` would only say "File exists" or "Not a directory".)
    """
    missing = None  # the outermost folder to make
    wanted = for_path if for_path is not None else folder
    for anc in (folder, *folder.parents):
        if anc.is_dir():
            break
        if anc.exists() or anc.is_symlink():
            what = "is a file, not a folder" + ("" if anc == wanted else f", so {wanted} cannot be created in it")
            raise EdgecellError(what, anc)
        missing = anc
    if missing is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgecellError(f"cannot create this folder ({os_reason(exc)})", folder) from None
    made = f"{missing}, which did not exist" if missing == folder else f"{folder} ({missing} did not exist)"
    warnings.warn(FolderCreated(f"created folder {made}"), stacklevel=2)


def check_writable(path: str | os.PathLike) -> None:
    """Fail now, with one line naming the folder, if ``path`` could not be written later.

    Creates the folder if needed and a temporary file in it (removed at once), so a long job
    (classifying thousands of images) does not end with results it cannot save.
    """
    if is_stream(path):
        if not os.access(path, os.W_OK):
            raise EdgecellError("cannot write here (Permission denied)", path)
        return
    if Path(path).is_symlink():
        path = os.path.realpath(path)
    folder = Path(path).parent
    _ensure_folder(folder, Path(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".check", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise EdgecellError(f"cannot write here ({os_reason(exc)})", folder) from None
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
        fsync(fh)
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


LITTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
"""Files an operating system's file browser leaves in folders; not a person's work, so a folder holding them is replaced."""

Owned = Collection[str] | Callable[[Path], Collection[str]]
"""What the writer of a staged folder wrote in it, as relative POSIX paths, or patterns (``evaluation/*_metrics.json``,
:func:`fnmatch.fnmatchcase`). Or a function of the existing folder that says so (for a folder whose manifest lists
its files)."""


def foreign_files(folder: str | os.PathLike, owned: Owned) -> list[str]:
    """The files (and links) under ``folder`` that ``owned`` does not claim, as sorted relative POSIX paths:
    what a person put in a folder that edgecell replaces whole. :data:`LITTER` and AppleDouble ``._`` files are left out."""
    folder = Path(folder)
    owned = frozenset(owned(folder) if callable(owned) else owned)
    patterns = [o for o in owned if any(c in o for c in "*?[")]

    def mine(rel: str) -> bool:
        return rel in owned or any(fnmatch.fnmatchcase(rel, p) for p in patterns)

    found = []

    def unreadable(exc: OSError) -> None:  # what cannot be listed cannot be shown to be edgecell's
        raise EdgecellError(f"cannot list a folder inside it ({os_reason(exc)}: {exc.filename}), so it is not replaced", folder)

    for top, dirs, files in os.walk(folder, onerror=unreadable):
        rel_top = Path(top).relative_to(folder)
        linked = [d for d in dirs if os.path.islink(os.path.join(top, d))]  # a link to a folder is an entry, never followed
        found += [rel for name in files + linked if name not in LITTER and not name.startswith("._") and not mine(rel := (rel_top / name).as_posix())]
        dirs[:] = [d for d in dirs if d not in linked]
    return sorted(found)


def some_of(names: Sequence[str], shown: int = 3, total: int | None = None) -> str:
    """The first ``shown`` of ``names``, comma-separated, and how many more there are (of ``total``, when ``names`` are
    some of them): for a one-line message."""
    total = len(names) if total is None else max(total, len(names))
    return ", ".join(names[:shown]) + (f" and {total - min(shown, len(names))} more" if total > min(shown, len(names)) else "")


ELSEWHERE = "choose another output folder"
"""What a person can do instead of replacing a folder, when the command lets them choose where it writes."""


def _check_target_folder(target: Path, marker: str | None, owned: Owned | None = None, elsewhere: str | None = ELSEWHERE) -> None:
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise EdgecellError("exists and is not a folder", target)
        if not os.access(target, os.W_OK | os.X_OK):  # the swap moves it aside, which a read-only folder refuses: after training, before
            raise EdgecellError(f"is read-only, so it cannot be replaced; make it writable, or {elsewhere or 'move it away first'}", target)
        if marker and any(target.iterdir()) and not (target / marker).exists():
            raise EdgecellError(f"exists, is not empty and is not an edgecell folder (no {marker}); {elsewhere or 'move it away first'}", target)
        foreign = foreign_files(target, owned) if owned is not None else []
        if foreign:
            named = some_of(foreign)
            what, them = ("a file", "it") if len(foreign) == 1 else (f"{len(foreign)} files", "them")
            raise EdgecellError(
                f"holds {what} this command does not write ({named}), which replacing the folder would delete; "
                f"move {them} out first" + (f", or {elsewhere}" if elsewhere else ""),
                target,
            )
    _ensure_folder(target.parent, target)


def _staged_target(target: str | os.PathLike) -> Path:
    """The folder a staged write replaces: the folder a link points to (the link stays a link). Never the folder the
    command runs in or one holding it (``.``, ``..``): swapped, it would be pulled from under the process."""
    t = Path(target)
    real = os.path.realpath(t)
    try:
        here = os.getcwd()
    except OSError:  # the folder it runs in is gone: nothing to pull from under it
        here = None
    if here is not None and _inside(here, real):
        raise EdgecellError("is the folder this command runs in (or holds it), which it would replace whole; give another folder", t)
    return Path(real) if t.is_symlink() and t.is_dir() else t


def check_stageable(target: str | os.PathLike, marker: str | None = None, owned: Owned | None = None, elsewhere: str | None = ELSEWHERE) -> None:
    """Fail now, with one line, if :func:`staged_dir` could not later write ``target``.

    The same checks as ``staged_dir`` (a file or a foreign folder in the way, a person's files
    inside it, a parent that cannot be created) plus creating and removing a staging folder, so a
    long job (training) is refused before it starts rather than after.
    """
    target = _staged_target(target)
    _check_target_folder(target, marker, owned, elsewhere)
    with _interrupts_held():
        probe = _new_temp(target.parent, f".{target.name}.check-", folder=True)
        with contextlib.suppress(OSError):
            probe.rmdir()


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike, marker: str | None = None, owned: Owned | None = None, elsewhere: str | None = ELSEWHERE) -> Iterator[Path]:
    """Build a whole folder in a hidden temporary sibling, then swap it in place of ``target``.

    Until the swap, an existing ``target`` is untouched, so an interrupted run (Ctrl-C, full
    disk, crash) leaves the previous results intact and no half-written folder behind.
    ``marker``: a file that must exist in a non-empty existing ``target`` for it to be replaced,
    so a user's unrelated folder is never overwritten. ``owned``: which files of an existing
    ``target`` its writer made (:data:`Owned`); any other file (a person's notes, a CSV saved
    beside the models, cells added to a class folder) makes it refuse, since the swap would delete it. ``elsewhere``:
    what the refusal offers instead (None: nothing, for a folder whose place the command fixes, as ``RUN/export``).

    The swap is two renames (old folder aside, new one in place); Ctrl-C is held back during
    them, and if the second fails the previous folder is put back. Errors raised inside the
    block that name a file in the staging folder are re-worded to name the final path.
    """
    target = _staged_target(target)
    parent = target.parent
    _check_target_folder(target, marker, owned, elsewhere)
    _note_left_over(target)
    tmp: Path | None = None
    try:
        with _interrupts_held():  # Ctrl-C between creating the staging folder and owning it would leak it
            tmp = _new_temp(parent, STAGING.format(target.name), folder=True)
        yield tmp
        raise_if_interrupted()  # a Ctrl-C that Python swallowed (in a finaliser) while the folder was built: not done
    except EdgecellError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            _retarget(exc, tmp, target)
        raise
    except OSError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise EdgecellError(f"cannot write output folder ({os_reason(exc)})", target) from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        _check_target_folder(target, marker, owned, elsewhere)  # again: a file put there while the new folder was built
    except EdgecellError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        with _interrupts_held():
            _swap(tmp, target)
            _put_in_place(target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise EdgecellError(f"cannot write output folder ({os_reason(exc)}); the previous one is unchanged", target) from None


STAGING = ".{}.tmp-"
"""How a staging folder beside an output folder is named (the output's name in the braces)."""

MOVED_ASIDE = ".{}.old-"
"""How the folder that holds the previous output during the swap is named."""


def _note_left_over(target: Path, folder: bool = True) -> None:
    """Say which staging folders (``folder``) or temporary files of ``target`` a killed run left beside it (a run that
    ends by an error or Ctrl-C removes its own); they are not removed here, since another run may be writing one now."""
    staging, aside = STAGING.format(target.name), MOVED_ASIDE.format(target.name)

    temp_file = re.compile(re.escape(f".{target.name}.") + r"[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?")  # _new_temp's file names

    def left(name: str) -> bool:
        return name.startswith((staging, aside)) if folder else temp_file.fullmatch(name) is not None

    try:
        names = sorted(e.name for e in os.scandir(target.parent) if left(e.name))
    except OSError:
        return
    for name in names:
        path = target.parent / name
        if name.startswith(aside) and (path / "prev").exists():
            what = f"holds the previous {target.name}, moved aside by a run that was stopped while putting its results in place"
        else:
            what = "is left from a run that was killed before it finished; delete it when no edgecell is writing here"
        warnings.warn(LeftOver(f"{path} {what}"), stacklevel=3)


def _swap(tmp: Path, target: Path) -> None:
    """Put ``tmp`` where ``target`` is; on failure the previous ``target`` is back in place."""
    if not target.exists():
        os.replace(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=MOVED_ASIDE.format(target.name), dir=target.parent))
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
            raise EdgecellError(f"cannot write output folder ({os_reason(exc)}); the previous one was moved to {old / 'prev'}", target) from None
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
def private_tempdir(prefix: str = "edgecell-") -> Iterator[Path]:
    """Send every temporary file of the block (``tempfile``, and ``TMPDIR`` for native code and children) to a new folder, removed at the end.

    TensorFlow's converter writes a SavedModel and autograph writes generated modules to the
    temporary directory, and leaves them when interrupted; inside this block they go to one folder
    that is removed however the block ends (an exception, Ctrl-C, SIGTERM, SIGHUP).
    """
    with _interrupts_held():
        made = tempfile.mkdtemp(prefix=prefix)
    saved_dir, saved_env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = made
    os.environ["TMPDIR"] = made
    try:
        yield Path(made)
    finally:
        tempfile.tempdir = saved_dir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(made, ignore_errors=True)


_HELD = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a service stop) or SIGHUP (the terminal closed), raised like Ctrl-C.

    Being a ``KeyboardInterrupt``, it runs every clean-up Ctrl-C runs: temporary files and
    staging folders are removed, worker processes stopped. The CLI exits 128 + ``signum``.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


_received: list[int] = []
"""The signals :func:`signals_as_interrupts` turned into exceptions, for :func:`raise_if_interrupted`."""


def _interrupt(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def raise_if_interrupted() -> None:
    """Raise again an interrupt whose exception was swallowed.

    Python drops an exception raised while it runs a finalizer or a weak-reference callback ("Exception
    ignored in ..."), so a Ctrl-C that lands there is lost and the work goes on. Long loops (training's
    batches) call this at safe points, and :func:`atomic_path` and :func:`staged_dir` before they put their
    output in place: once a signal has arrived, the work stops there and nothing of it is kept.
    """
    if _received:
        raise _interrupt(_received[-1])


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """For the duration, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread, as Ctrl-C raises ``KeyboardInterrupt``,
    and every one of them is recorded for :func:`raise_if_interrupted`.

    A second SIGTERM or SIGHUP while the first is being cleaned up after is ignored (``kill -9`` still
    works). Elsewhere than in the main thread this does nothing.
    """
    sigs = [s for s in _HELD if s != signal.SIGINT]
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        _received.append(signum)
        if signum != signal.SIGINT:
            for s in sigs:
                with contextlib.suppress(ValueError, OSError):
                    signal.signal(s, signal.SIG_IGN)
        raise _interrupt(signum)

    def unraisable(info) -> None:
        # an interrupt raised inside a finaliser is recorded already (raise_if_interrupted raises it again at the
        # next safe point): not a traceback for the user ("Exception ignored in ..."). C code that an interrupt
        # reached may report it wrapped ("SystemError: ... returned a result with an exception set", from inside
        # TensorFlow's nest utilities during training).
        if not _caused_by_interrupt(info.exc_value):
            previous_hook(info)

    previous = {}
    previous_hook = sys.unraisablehook
    _received.clear()
    try:
        sys.unraisablehook = unraisable
        for s in _HELD:
            previous[s] = signal.signal(s, handler)
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        sys.unraisablehook = previous_hook
        _received.clear()


def _caused_by_interrupt(exc: BaseException | None) -> bool:
    """``exc`` is an interrupt, or an error raised from one (its ``__cause__`` or ``__context__`` chain)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (KeyboardInterrupt, Terminated)):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold back SIGINT (Ctrl-C), SIGTERM (``kill``, a service stop) and SIGHUP for the duration.

    A signal that arrives meanwhile is delivered afterwards, as it would have been. Only
    possible in the main thread; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, object] = {}
    try:
        for sig in _HELD:
            previous[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
    except (ValueError, OSError):  # pragma: no cover - not the main interpreter
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        yield
        return
    try:
        yield
    finally:  # delivered even when the block failed: the failure may be the interrupt's doing (a worker it stopped)
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


# ------------------------------------------------------------------------------ where outputs may go

STDOUT = "-"
"""The output path that means standard output."""
TO_STDOUT = frozenset({"--json", "--csv"})
"""The output options that take :data:`STDOUT`; any other (``--report``, ``--manifest``) refuses it rather than write a
file named ``-``."""
EXAMPLE_SUFFIX = {"--report": "html", "--manifest": "csv"}
"""The suffix of the file name an error suggests for an output option (default: the option's name)."""


def _example_name(opt: str) -> str:
    name = opt.lstrip("-")
    return f"{name}.{EXAMPLE_SUFFIX.get(opt, name)}"


class OutputRefused(EdgecellError, ValueError):
    """An output path that would destroy something the command reads, or another output: a usage error (a ValueError to the API)."""

    exit_code = 2


def check_outputs(
    files: Mapping[str, str | os.PathLike | None],
    reads: Iterable[tuple[str | os.PathLike, str]] = (),
    folders: Mapping[str, str | os.PathLike | None] | None = None,
    whole: bool = True,
) -> None:
    """Refuse, in one line (:class:`OutputRefused`, exit 2), outputs that would destroy what is being read.

    Args:
        files: output files by option name (``{"--json": "r.json", "--csv": None}``); ``-`` is stdout.
        reads: what the command reads (or writes itself), as ``(path, what)``: ``(image, "an input
            image")``, ``(data_dir, "the data folder being read")``; a folder protects everything in it.
        folders: output folders by option name (``{"--out": "ev"}``); such a folder may not be, or
            lie inside, a folder being read, nor hold anything being read.
        whole: the ``folders`` are replaced whole (:func:`staged_dir`), so no output file may lie inside one (it
            would be lost with the old folder, or make the next run refuse); False for a folder written file by file.

    An output file may not be a file being read (through any link), may not lie inside a folder
    being read (a report in the data folder would be read back as an image, or replace one), and
    two outputs may not name the same file. Checked before any work, so nothing is lost later.
    """
    folders = dict(folders or {})
    read_files: list[tuple[str, str]] = []  # (given, what); compared by inode, so links and other spellings count
    read_dirs: list[tuple[str, str, str]] = []  # (realpath, given, what)
    if all(d is None or os.fspath(d) in ("", STDOUT) for d in files.values()) and all(d is None or os.fspath(d) == "" for d in folders.values()):
        reads = ()  # nothing written to a named path: nothing to compare (20,000 images are not stat-ed for '-')
    flat = []
    for p, what in reads:  # a repeated option (--data A --data B) gives a tuple of paths
        flat.extend((q, what) for q in (p if isinstance(p, (list, tuple)) else (p,)))
    for p, what in flat:
        if p is None or os.fspath(p) == "":
            continue
        if os.path.isdir(p):
            read_dirs.append((os.path.realpath(p), os.fspath(p), what))
        else:
            read_files.append((os.fspath(p), what))

    out_dirs = [(os.path.realpath(os.fspath(d)), opt) for opt, d in folders.items() if whole and d is not None and os.fspath(d) != ""]
    seen: dict[str, str] = {}
    to_stdout = [opt for opt, dest in files.items() if opt in TO_STDOUT and dest is not None and os.fspath(dest) == STDOUT]
    if len(to_stdout) > 1:
        raise OutputRefused(f"only one of {' and '.join(to_stdout)} can write to stdout ('-'); send the other to a file")
    for opt, dest in {**files, **folders}.items():
        if dest is None:
            continue
        given = os.fspath(dest)
        is_folder = opt in folders
        if given == "":
            raise OutputRefused(
                f"{opt} is an empty path; give a " + ("folder name" if is_folder else "file name" + (", or '-' for stdout" if opt in TO_STDOUT else ""))
            )
        if given == STDOUT and not is_folder:
            if opt not in TO_STDOUT:
                raise OutputRefused(f"{opt} writes a file, not standard output; give a file name (such as {_example_name(opt)})", given)
            check_stdout()
            continue
        if not is_folder and given.endswith(("/", os.sep)):
            raise OutputRefused(f"{opt} ends with '/', so it names a folder; give a file name (such as {given}{_example_name(opt)})", given)
        real = os.path.realpath(given)
        if not is_folder and not is_stream(real):
            _note_left_over(Path(real), folder=False)
        if real in seen:
            raise OutputRefused(f"{seen[real]} and {opt} name the same file; give each its own", given)
        seen[real] = opt
        for r, shown, what in read_dirs:
            if _inside(real, r):
                where = "is" if real == r else "is inside"
                raise OutputRefused(f"{opt} {where} {what} ({shown}); write it elsewhere", given)
            if is_folder and _inside(r, real):
                raise OutputRefused(f"{opt} holds {what} ({shown}); choose another folder", given)
        if not is_folder:
            for folder, fopt in out_dirs:
                if _inside(real, folder):  # written before the folder is replaced whole: lost, or refused next time
                    raise OutputRefused(f"{opt} is inside {fopt}, which this command replaces whole; write it elsewhere", given)
        if is_folder:
            for shown, what in read_files:
                if _inside(os.path.realpath(shown), real):
                    raise OutputRefused(f"{opt} holds {what} ({shown}); choose another folder", given)
        elif os.path.isfile(real):
            same = _same_file_as(real, read_files)
            if same is not None:
                shown, what = same
                also = "" if os.path.realpath(shown) == real else f" {shown}"
                raise OutputRefused(f"{opt} would overwrite {what}{also}; choose another file", given)
            kind = _precious(real)
            if kind:
                raise OutputRefused(f"{opt} would overwrite {kind}, which no edgecell output replaces; choose another file", given)


def _precious(path: str) -> str | None:
    """What an existing file is, if it is something a person keeps that no results file should replace: an image, a
    model, a model's sidecar, a run's metadata, split or records, an export's parity report or calibration manifest (a
    typo such as ``--json export/model_int8.tflite``, or ``inspect --manifest RUN/split.csv``, after which the run's
    test split held training images; ``classify --csv RUN/metrics.json``, after which ``audit`` could not read the
    run); else None."""
    from firmware_host.metadata import (
        CALIBRATION_MANIFEST,
        KERAS_FILE,
        PARITY_FILE,
        RUN_MARKER,
        RUN_RECORDS,
        SPLIT_FILE,
        model_of_sidecar,
    )
    from firmware_host.preprocess import IMAGE_SUFFIXES

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "an image"
    if suffix in (".tflite", ".keras"):
        return "a model"
    in_run = (p.parent / KERAS_FILE).is_file()
    if model_of_sidecar(p) or (p.name == RUN_MARKER and in_run):
        return "a model's metadata"
    if p.name == SPLIT_FILE and in_run:
        return "a run's split (what its model was trained and tested on)"
    if p.name in RUN_RECORDS and in_run:
        return f"a run's record of its training ({p.name})"
    if p.name in (PARITY_FILE, CALIBRATION_MANIFEST) and any(p.parent.glob("*.tflite")):
        return "an export's parity report" if p.name == PARITY_FILE else "an export's calibration manifest"
    return None


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # different drives
        return False


def _same_file_as(real: str, read_files: list[tuple[str, str]]) -> tuple[str, str] | None:
    """The read file that ``real`` is (under any name: a link, another spelling), or None."""
    try:
        st = os.stat(real)
    except OSError:
        return None
    for entry in read_files:
        try:
            rs = os.stat(entry[0])
        except OSError:
            continue
        if (rs.st_dev, rs.st_ino) == (st.st_dev, st.st_ino):
            return entry
    return None


def check_stdout() -> None:
    """Fail now, in one line, if standard output is closed or cannot be written (``>&-``)."""
    out = sys.stdout
    if out is None:
        raise EdgecellError("standard output is closed, so '-' has nowhere to go; give a file name", "stdout")
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (captured in tests): writes are checked as they happen
    try:
        import fcntl

        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except ImportError:  # pragma: no cover - not POSIX
        return
    except OSError:
        raise EdgecellError("standard output is closed, so '-' has nowhere to go; give a file name", "stdout") from None
    if flags & os.O_ACCMODE == os.O_RDONLY:
        raise EdgecellError("standard output is open for reading only, so '-' has nowhere to go; give a file name", "stdout")


class StdoutError(EdgecellError):
    """Standard output cannot be written (the reader went away, the disk is full): the user's situation, not a bug."""


def stdout_error(exc: OSError) -> StdoutError:
    """The one-line error for ``exc``, raised while writing standard output."""
    if isinstance(exc, BrokenPipeError) or exc.errno == errno.EPIPE:
        return StdoutError("the program reading standard output stopped (broken pipe); the output is incomplete", "stdout")
    return StdoutError(f"cannot write standard output ({os_reason(exc)}); the output is incomplete", "stdout")


def write_stdout(data: str | bytes) -> None:
    """Write ``data`` to standard output and flush; a closed, broken or full stdout is one :class:`StdoutError` line."""
    check_stdout()
    out = sys.stdout
    try:
        if isinstance(data, str):
            buf = getattr(out, "buffer", None)
            if buf is not None:
                out.flush()
                buf.write(data.encode(out.encoding or "utf-8", "surrogateescape"))
                buf.flush()
            else:
                out.write(data)
        else:
            (getattr(out, "buffer", None) or out).write(data)
        out.flush()
    except OSError as exc:
        raise stdout_error(exc) from None


# ------------------------------------------------------------------------------ CSV


class _RowEnds:
    """Turns each row's ``\\r\\n`` terminator into ``\\n`` (quoted CR/LF inside fields are kept)."""

    def __init__(self, fh):
        self.fh = fh

    def write(self, s: str):
        if s.endswith("\r\n"):
            s = s[:-2] + "\n"
        return self.fh.write(s)


def csv_writer(fh, **kwargs):
    """A ``csv.writer`` whose rows end in ``\\n`` and which quotes a field holding a CR, an LF, a comma or a quote.

    (``csv.writer(fh, lineterminator="\\n")`` leaves a bare carriage return unquoted, so a file
    name holding one splits its row.) Read the file back with ``newline=""`` (or from bytes).
    """
    return csv.writer(_RowEnds(fh), lineterminator="\r\n", **kwargs)


def csv_dict_writer(fh, fieldnames, **kwargs):
    """A ``csv.DictWriter`` with the quoting of :func:`csv_writer`."""
    return csv.DictWriter(_RowEnds(fh), fieldnames=fieldnames, lineterminator="\r\n", **kwargs)


def read_csv_text(path: str | os.PathLike, encoding: str = "utf-8", errors: str = "surrogateescape") -> str:
    """The text of a CSV file with its line ends untouched (a CR inside a quoted field stays a CR)."""
    with open(path, "rb") as fh:
        return fh.read().decode(encoding, errors)
