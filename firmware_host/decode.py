"""Decode many image files ahead of their use, in parallel, in input order.

:func:`decode_many` runs in threads (the library default: no start-up cost) or in worker processes.
Pillow holds Python's GIL for part of every image, so threads share one core for that part and hold
up whichever thread wants to run the interpreter next; processes do not. The process machinery
(:func:`ordered_chunks`) also serves ``Classifier.classify_many(processes=True)``, where each worker
decodes *and* classifies. How the two compare is measured by benchmarks/run.py (see docs/design.md).

Either way the result is the same bytes in the same order (tested): ``(path, image, ms)`` or
``(path, ImageError, 0.0)`` per file. A worker never raises for a bad file, and a worker process
that dies (killed for memory, say) only makes the files it held run in this process instead.
As with any use of :mod:`multiprocessing`, a script that asks for processes must keep its
top-level code under ``if __name__ == "__main__":`` (workers import the main module); left to choose
(``processes=None``), edgecell uses threads for a script without it (:func:`main_is_guarded`).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import math
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from firmware_host.atomic import _interrupts_held
from firmware_host.errors import ImageError
from firmware_host.preprocess import load_cell

#: With ``processes=None``, lists at least this long are decoded in worker processes.
PROCESS_MIN_FILES = 256
#: Files per task sent to a worker process (one round trip per chunk, not per file).
CHUNK = 16

Decoded = tuple[str, "np.ndarray | ImageError", float, float]
"""``(path, image or error, decode ms, nucleus offset)`` (the offset of :func:`firmware_host.preprocess.prepare_cell`; NaN for an error)."""


CELL_WORKER_MB = 80
"""Memory a worker process classifying single-cell images takes: about 56 MB resident (Python, numpy, Pillow, LiteRT
and the model, after 50 images; x86), with room."""


def available_mb(proc: str = "/proc", cgroups: str = "/sys/fs/cgroup") -> float | None:
    """The memory new work can take without swapping, in MB: what the kernel says (``MemAvailable``), or less when this
    process's control group (a container's, a service's ``MemoryMax``) has less left under its limit
    (:func:`cgroup_free_mb`); None where neither says (not Linux)."""
    free = None
    try:
        with open(os.path.join(proc, "meminfo"), encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) / 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    group = cgroup_free_mb(proc, cgroups)
    return group if free is None else free if group is None else min(free, group)


def cgroup_free_mb(proc: str = "/proc", cgroups: str = "/sys/fs/cgroup") -> float | None:
    """What this process's memory control group has left under its limit, in MB (cgroup v2's ``memory.max`` less
    ``memory.current``, or v1's ``memory.limit_in_bytes`` less ``memory.usage_in_bytes``): the least over the group and
    the groups above it (a service's group without a limit of its own, in a slice or a container that has one); None
    without a limit."""
    try:
        with open(os.path.join(proc, "self", "cgroup"), encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "-", "")
        if controllers == "":  # v2: one hierarchy
            root, limit_file, used_file = cgroups, "memory.max", "memory.current"
        elif "memory" in controllers.split(","):  # v1: the memory controller's hierarchy
            root, limit_file, used_file = os.path.join(cgroups, "memory"), "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        parts = [p for p in path.split("/") if p and p != ".."]
        free = [_group_free_mb(os.path.join(root, *parts[:n]), limit_file, used_file) for n in range(len(parts), -1, -1)]
        limited = [f for f in free if f is not None]
        if limited:
            return min(limited)
    return None


def _group_free_mb(folder: str, limit_file: str, used_file: str) -> float | None:
    """One control group's memory left under its limit, in MB; None without a limit or without the files (a root group
    has none)."""
    try:
        with open(os.path.join(folder, limit_file), encoding="ascii") as fh:
            limit = fh.read().strip()
        with open(os.path.join(folder, used_file), encoding="ascii") as fh:
            used = int(fh.read())
        if limit == "max" or int(limit) >= 1 << 60:  # no limit (v1 writes a huge number)
            return None
        return max(0.0, (int(limit) - used) / 2**20)
    except (OSError, ValueError):
        return None


def default_workers(worker_mb: float = CELL_WORKER_MB) -> int:
    """Worker processes when not told: the cores, at most 4, and no more than the available memory holds at
    ``worker_mb`` each (a Pi Zero 2 has 4 cores and 512 MB: four workers on 48-megapixel photos would be killed
    for memory one by one); 1 means the work is done in this process."""
    n = max(1, min(4, os.cpu_count() or 1))
    free = available_mb()
    return n if free is None else max(1, min(n, int(free // worker_mb)))


def _decode_one(path: str, size: int) -> tuple[np.ndarray | None, float, str | None, float]:
    t0 = time.perf_counter()
    try:
        image, offset = load_cell(path, size)
        return image, (time.perf_counter() - t0) * 1000.0, None, offset
    except ImageError as exc:
        return None, 0.0, exc.reason, math.nan
    except Exception as exc:
        return None, 0.0, f"cannot decode image ({type(exc).__name__})", math.nan


def _decode_chunk(paths: list[str], size: int) -> list[tuple[np.ndarray | None, float, str | None, float]]:
    return [_decode_one(p, size) for p in paths]


def _process_pool(workers: int, initializer=None, initargs: tuple = ()) -> cf.ProcessPoolExecutor | None:
    """A pool of worker processes, or None where processes cannot be started here.

    ``initializer(*initargs)`` runs in each worker after Ctrl-C is set to be ignored there.
    """
    try:
        methods = mp.get_all_start_methods()
        # forkserver: workers fork from a clean single-threaded server (never from this process,
        # whose interpreter may run threads); spawn where there is no forkserver.
        ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        if ctx.get_start_method() == "forkserver":
            # imported once by the server, so that every worker starts with them (missing ones are skipped)
            ctx.set_forkserver_preload(["firmware_host.runtime", "ai_edge_litert.interpreter", "tflite_runtime.interpreter"])
            _start_forkserver()
        return cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init, initargs=(initializer, initargs, os.getpid()))
    except (OSError, ValueError, NotImplementedError, ImportError):
        return None


def _start_forkserver() -> None:
    """Start the forkserver (if it is not running) with Ctrl-C blocked in it until it ignores Ctrl-C itself.

    Ctrl-C goes to the whole process group. A server started on the first ``submit`` with Ctrl-C at its default still
    imports its preloads: Ctrl-C then printed its traceback and broke its pipe, which the command reported as a failure
    to write its output file. A new process keeps the signal mask of the thread that starts it, so the signal stays
    pending in the server until it sets Ctrl-C to be ignored, and is dropped then; here it is delivered as usual."""
    from multiprocessing import forkserver, resource_tracker

    mask = getattr(signal, "pthread_sigmask", None)  # POSIX; the forkserver exists only there
    with _interrupts_held():  # a Ctrl-C meanwhile is raised after the server has started, not halfway through starting it
        resource_tracker.ensure_running()  # first: starting it unblocks Ctrl-C (its own start blocks it the same way)
        before = mask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGHUP}) if mask else None
        try:
            forkserver.ensure_running()
        finally:
            if mask:
                mask(signal.SIG_SETMASK, before)


def _stop_workers(pool: cf.ProcessPoolExecutor) -> None:
    """End a pool's worker processes now (SIGTERM): their queued work is cancelled anyway, and waiting for them to take
    a last message could wait for ever on one that an interrupt caught as it started."""
    stop = getattr(pool, "terminate_workers", None)  # Python 3.14+
    if stop is not None:
        stop()
    else:
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(OSError, ValueError, AttributeError):  # already ended, or never started
                proc.terminate()
    # A worker stopped while it was sending a chunk's results leaves half a message in the results pipe, and the
    # pool's thread would wait for the rest for ever (in shutdown, and again at exit): this process holds the pipe's
    # writing end too. Closed here, the pipe ends once the workers have, so that thread reads the end, finds the pool
    # broken and stops. (This process never writes to that pipe; the workers' own ends are theirs.)
    writer = getattr(getattr(pool, "_result_queue", None), "_writer", None)
    if writer is not None:
        with contextlib.suppress(OSError):
            writer.close()


def _worker_init(initializer=None, initargs: tuple = (), parent: int | None = None) -> None:
    # Ctrl-C, and the hang-up of a closed terminal, go to the whole process group; only the
    # parent decides what to do with them (it stops the pool, and so these workers).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if parent is not None:
        exit_with(parent)
    from firmware_host.quiet import install_warning_lines

    install_warning_lines()  # a warning about an image is one line naming it, here too
    if initializer is not None:
        initializer(*initargs)


def exit_with(pid: int, poll_s: float = 0.5) -> None:
    """End this process as soon as process ``pid`` has ended, however it ended (even ``kill -9``).

    A worker's parent is the forkserver, not the process that asked for it, so the kernel's
    parent-death signal would not follow the right process; instead a daemon thread waits on a
    pidfd of ``pid`` (Linux 5.3+), or polls it every ``poll_s`` seconds elsewhere. Without this, a
    worker whose parent was killed waits for work forever (it holds its own queue's write end),
    and keeps the resource tracker alive with it.
    """
    import threading

    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None

    def watch() -> None:
        if fd is not None:
            import select

            select.select([fd], [], [])
        else:
            while True:
                time.sleep(poll_s)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                except OSError:
                    pass
        os._exit(1)

    threading.Thread(target=watch, name="edgecell-exit-with-parent", daemon=True).start()


def ordered_chunks(paths: Iterable[str | os.PathLike], pool, remote, local, workers: int) -> Iterator[tuple[list[str], list]]:
    """Run ``remote(chunk)`` in ``pool`` on chunks of :data:`CHUNK` paths; yield ``(chunk, results)`` in order.

    At most two chunks per worker are in flight. A chunk whose worker died (or any chunk once
    the pool is broken) runs through ``local(chunk)`` in this process instead. The pool is shut
    down at the end; on Ctrl-C (or an error, or a caller that stops reading) its workers are stopped first
    (:func:`_stop_workers`) and queued chunks dropped.
    """
    it = (os.fspath(p) for p in paths)
    pending: deque = deque()
    broken = False
    try:
        while True:
            chunk = [p for _, p in zip(range(CHUNK), it)]
            if chunk:
                fut = None
                if not broken:
                    try:
                        # Ctrl-C in the middle of submit could leave a worker half-started (sent to
                        # the forkserver, not yet known to the pool, so never joined); it would then
                        # print a traceback after this process has gone. Delivered just after instead.
                        with _interrupts_held():
                            fut = pool.submit(remote, chunk)
                    except (BrokenProcessPool, RuntimeError):
                        broken = True
                if fut is None:
                    fut = cf.Future()
                    fut.set_result(local(chunk))
                pending.append((chunk, fut))
            if not pending:
                break
            if len(pending) >= 2 * workers or not chunk:
                done, fut = pending.popleft()
                try:
                    results = fut.result()
                except BrokenProcessPool:
                    broken = True
                    results = local(done)  # the worker died: do its files here
                yield done, results
    except BaseException:  # Ctrl-C, an error, or a caller that stopped reading: the workers' work is not wanted
        # Queued chunks are left for the pool to drop: a future cancelled here could later be failed by the pool's
        # thread when it finds the workers stopped (InvalidStateError, printed from that thread).
        _stop_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True, cancel_futures=True)  # every chunk is done


def _as_decoded(paths: list[str], results) -> Iterator[Decoded]:
    for p, (img, ms, reason, offset) in zip(paths, results):
        yield (p, img, ms, offset) if reason is None else (p, ImageError(reason, p), 0.0, math.nan)


def use_processes(paths, workers: int, processes: bool | None) -> bool:
    """Resolve ``processes=None`` (auto): a list of at least :data:`PROCESS_MIN_FILES`, more than one worker, and a main
    module that worker processes may import (:func:`main_is_guarded`)."""
    if processes is None:
        return workers > 1 and isinstance(paths, Sequence) and len(paths) >= PROCESS_MIN_FILES and main_is_guarded()
    return bool(processes)


def main_is_guarded() -> bool:
    """Whether worker processes can import the main module without running the code that asks for them again: the
    module is no file (an interactive session, ``python -c``, ``python -m package``), or the call comes from inside its
    ``if __name__ == "__main__":`` block (the ``edgecell`` command, a script written as Python's documentation asks).
    A worker process imports the main module first; a ten-line script without the guard would run again in each
    worker, start its own workers and fail (the README's example did, on a slide of 256 images), so for such a script
    the automatic choice is threads."""
    import sys

    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    path = getattr(main, "__file__", None)
    if spec is None and path is None:
        return True
    if spec is not None and (spec.name == "__main__" or spec.name.endswith(".__main__")):
        return True  # ``python -m package``: workers do not import a package's __main__ again
    guards = _main_guards(spec.origin if spec is not None else path)
    if not guards:
        return False
    frame = sys._getframe()  # where the main module's top-level code is now, on this thread's stack
    while frame is not None and not (frame.f_globals is vars(main) and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    return frame is None or any(first <= frame.f_lineno <= last for first, last in guards)  # None: another thread


@functools.cache
def _main_guards(path: str | None) -> tuple[tuple[int, int], ...]:
    """The line ranges of the top-level ``if __name__ == "__main__":`` blocks of the Python file ``path``."""
    import ast

    try:
        with open(path, "rb") as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError, ValueError, TypeError):
        return ()

    def is_guard(t: ast.expr) -> bool:
        return (
            isinstance(t, ast.Compare)
            and [type(op) for op in t.ops] == [ast.Eq]
            and {ast.unparse(x) for x in (t.left, *t.comparators)} == {"__name__", "'__main__'"}
        )

    return tuple((node.lineno, node.end_lineno or node.lineno) for node in tree.body if isinstance(node, ast.If) and is_guard(node.test))


def decode_many(
    paths: Iterable[str | os.PathLike],
    size: int,
    workers: int | None = None,
    processes: bool | None = False,
) -> Iterator[Decoded]:
    """Decode ``paths`` to ``(size, size, 3)`` uint8 arrays ahead of the caller, in input order.

    Args:
        workers: decoders running at once (default: :func:`default_workers`).
        processes: True for worker processes, False for threads (the default); None chooses
            processes for a list of at least :data:`PROCESS_MIN_FILES` files when ``workers > 1``, called where
            workers may import the main module (:func:`main_is_guarded`).

    Yields ``(path, image, decode ms, nucleus offset)``, or ``(path, ImageError, 0.0, nan)`` for a file that
    cannot be used. Only a few files per worker are decoded ahead, so memory stays flat however many
    files there are.
    """
    workers = workers or default_workers()
    pool = _process_pool(workers) if use_processes(paths, workers, processes) else None
    if pool is None:
        yield from _decode_in_threads(paths, size, workers)
        return
    work = functools.partial(_decode_chunk, size=size)
    for chunk, results in ordered_chunks(paths, pool, work, work, workers):
        yield from _as_decoded(chunk, results)


def _decode_in_threads(paths: Iterable[str | os.PathLike], size: int, workers: int) -> Iterator[Decoded]:
    def one(p: str | os.PathLike) -> tuple[str, tuple]:
        p = os.fspath(p)
        return p, _decode_one(p, size)

    for p, result in map_in_threads(one, paths, workers):
        yield from _as_decoded([p], [result])


def map_in_threads(fn: Callable, items: Iterable, workers: int | None = None, ahead: int | None = None) -> Iterator:
    """``map(fn, items)`` in a thread pool, results in input order, at most ``ahead`` items in flight.

    On Ctrl-C, an error, or a caller that stops iterating, queued work is cancelled and the pool
    shut down without running it (leaving a plain ``with ThreadPoolExecutor()`` block waits for
    every queued item, so Ctrl-C while reading 10,000 images would hang until all were read).
    ``workers`` defaults to :func:`default_workers`, ``ahead`` to four per worker.
    """
    workers = workers or default_workers()
    ahead = ahead or 4 * workers
    pending: deque[cf.Future] = deque()
    pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgecell-pool")
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
