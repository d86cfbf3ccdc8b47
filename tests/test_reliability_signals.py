"""Reliability, round 2 (issue #18), processes: kill, a service stop or a closed terminal leave nothing behind.

A real ``python -m edgecell`` is signalled while it works, as a user or a service manager would
(``kill PID``, ``kill -HUP PID``, ``kill -9 PID``): SIGTERM and SIGHUP are handled like Ctrl-C
(exit 143 / 129, one line, nothing half-written, temporary files removed); whatever ends the
main process, its worker processes, the forkserver and the resource tracker end with it.
docs/reliability.md ("Interruptions") lists each case.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

from firmware_host.atomic import Terminated, raise_if_interrupted, signals_as_interrupts
from tests._tflite_fixtures import distinct_copy, labelled_folder

from .test_reliability import ROOT, leftovers, nonblank, tree_digest

N_IMAGES = 3000  # enough for worker processes (256+) and for a run that lasts while we signal it


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """``N_IMAGES`` small JPEGs in class folders: a few images, copied many times (each copy its own bytes: copies and links are classified once)."""
    root = tmp_path_factory.mktemp("many")
    base = labelled_folder(root / "base", per_class=2)
    data = root / "data"
    files = sorted(base.rglob("*.jpg"))
    for i in range(N_IMAGES):
        src = files[i % len(files)]
        dst = data / src.parent.name / f"{i:05d}_{src.name}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        distinct_copy(src, dst, i)
    return data


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    return kids


def descendants(pid: int) -> set[int]:
    kids, out, todo = _children(), set(), [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            if k not in out:
                out.add(k)
                todo.append(k)
    return out


def alive(pids) -> set[int]:
    """The processes of ``pids`` still running (a zombie has ended)."""
    out = set()
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            out.add(p)
    return out


def _start(args, tmpdir: Path) -> subprocess.Popen:
    tmpdir.mkdir(exist_ok=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", TMPDIR=str(tmpdir))
    env.pop("EDGECELL_DEBUG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "edgecell", *(os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _wait_for(proc, ready, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.02)


def _signal_and_wait(proc, sig, what: str, timeout: float) -> str:
    """Send ``sig`` to ``proc`` and wait for it to end; its stderr. Fails the test if it is still running after ``timeout`` s."""
    proc.send_signal(sig)
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{what} did not stop within {timeout:g} s of {signal.Signals(sig).name}")


def _assert_gone(pids, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = alive(pids)
    if left:
        for p in left:  # do not leave them to the next test
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
        pytest.fail(
            f"{len(left)} process(es) outlived their parent by {within} s: "
            + ", ".join(Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")[:80] for p in left if Path(f"/proc/{p}").exists())
        )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=lambda s: signal.Signals(s).name)
def test_classify_killed_mid_run_leaves_no_process_and_no_temp_file(models, many, tmp_path, sig):
    out = tmp_path / "out"
    out.mkdir()
    tmpdir = tmp_path / "tmp"
    proc = _start(["classify", "--model", models.int8, many, "--csv", out / "r.csv", "--json", out / "r.json"], tmpdir)
    family: set[int] = set()

    def working() -> bool:  # worker processes started and results streaming into the temporary CSV
        family.update(descendants(proc.pid))
        return len(family) >= 3 and bool(glob.glob(str(out / ".r.csv.*")))

    _wait_for(proc, working, "worker processes and a temporary CSV")
    family.update(descendants(proc.pid))
    err = _signal_and_wait(proc, sig, "classify", 60)
    _assert_gone(family)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        return  # nothing can run in a process killed so; earlier results are intact (the outputs never existed)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err, err
    assert nonblank(err)[-1] == f"Interrupted by {signal.Signals(sig).name}: nothing half-written was kept; earlier results are intact.", err
    assert list(out.iterdir()) == [], "a half-written or temporary output was left"
    assert list(tmpdir.iterdir()) == [], "temporary files (multiprocessing's) were left"


CONVERT_ATTEMPTS = 3
"""Tries at catching ``convert`` between its SavedModel and its end: on a loaded machine the signal can land after it finished."""


def test_sigterm_during_convert_leaves_no_savedmodel_or_autograph_files(converted, tmp_path):
    tmpdir = tmp_path / "tmp"

    def saved_model_written() -> bool:  # the converter's SavedModel, wherever under TMPDIR it is
        return bool(glob.glob(str(tmpdir / "**" / "saved_model.pb"), recursive=True))

    for attempt in range(CONVERT_ATTEMPTS):
        run = tmp_path / f"run{attempt}"
        shutil.copytree(converted, run)
        before = tree_digest(run)
        proc = _start(["convert", run, "--int8", "--max-drop", 100], tmpdir)
        _wait_for(proc, saved_model_written, "SavedModel in the temporary directory", timeout=300)
        err = _signal_and_wait(proc, signal.SIGTERM, "convert", 120)
        if proc.returncode != 0:
            break
        shutil.rmtree(tmpdir)  # it finished before the signal landed: nothing was interrupted, so try again
    assert proc.returncode == 143, f"after {attempt + 1} attempts: {err}"
    assert nonblank(err)[-1] == "Interrupted by SIGTERM: nothing half-written was kept; earlier results are intact.", err
    assert [p.name for p in tmpdir.iterdir()] == [], "the converter's temporary files were left"
    assert tree_digest(run) == before and leftovers(run) == []
    shutil.rmtree(tmpdir)


class _SignalsOnCollection:
    """An object whose finaliser sends this process a signal: where Python swallows the exception it raises."""

    def __init__(self, signum: int):
        self.signum = signum

    def __del__(self):
        os.kill(os.getpid(), self.signum)
        time.sleep(0.05)  # the handler runs here, inside the finaliser


class _FailsOnCollection:
    def __del__(self):
        raise ValueError("a finaliser's own error")


@pytest.mark.parametrize("signum, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)])
def test_an_interrupt_python_swallowed_is_raised_again_at_the_next_safe_point(signum, raised, monkeypatch):
    forwarded = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: forwarded.append(u.exc_type))  # Python's "Exception ignored in" + traceback
    with signals_as_interrupts():
        _SignalsOnCollection(signum)  # dropped at once; its finaliser is interrupted, and Python goes on
        assert forwarded == []  # recorded, and no traceback printed (CI saw one on stderr after a Ctrl-C in convert)
        _FailsOnCollection()
        assert forwarded == [ValueError]  # any other error in a finaliser is reported as before
        with pytest.raises(raised):
            raise_if_interrupted()  # what training calls after every batch
    raise_if_interrupted()  # the record does not outlive the command
    _FailsOnCollection()
    assert forwarded == [ValueError, ValueError]  # the hook is Python's again


class _WrapsAnInterrupt:
    """A finaliser whose C code an interrupt reached and which reports it wrapped, as TensorFlow's nest utilities did
    in CI ("SystemError: <built-in function __import__> returned a result with an exception set")."""

    def __del__(self):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise SystemError("<built-in function __import__> returned a result with an exception set") from exc


def test_an_interrupt_wrapped_by_c_code_in_a_finaliser_prints_no_traceback(monkeypatch):
    forwarded = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: forwarded.append(u.exc_type))
    with signals_as_interrupts():
        _WrapsAnInterrupt()
        assert forwarded == []
        _FailsOnCollection()
        assert forwarded == [ValueError]
    _WrapsAnInterrupt()
    assert forwarded == [ValueError, SystemError]  # outside a command, Python's hook as before


@pytest.mark.parametrize("staged", [True, False])
def test_an_interrupt_python_swallowed_keeps_the_output_from_being_put_in_place(staged, tmp_path, monkeypatch):
    """A Ctrl-C that lands in a finaliser (TensorFlow's C objects have them) while an output is being built is
    swallowed by Python; the folder or file is still not put in place, and nothing half-written is left."""
    from firmware_host.atomic import atomic_path, staged_dir

    monkeypatch.setattr(sys, "unraisablehook", lambda u: None)
    target = tmp_path / ("export" if staged else "model.json")
    output = staged_dir(target) if staged else atomic_path(target)
    with signals_as_interrupts(), pytest.raises(KeyboardInterrupt), output as tmp:
        (tmp / "model.tflite").write_bytes(b"x") if staged else tmp.write_bytes(b"x")
        _SignalsOnCollection(signal.SIGINT)  # swallowed; the block goes on to its end
    assert sorted(p.name for p in tmp_path.iterdir()) == []


class _ConverterHitBySignal:
    """A TFLite converter whose C++ is interrupted by ``signum`` and reports it as an error of its own
    (pybind11: "MISMATCH of original and normalized active exception types ... REPLACED BY Terminated")."""

    def __init__(self, signum: int):
        self.signum = signum

    def convert(self):
        try:
            os.kill(os.getpid(), self.signum)
            time.sleep(0.05)
        except BaseException as exc:
            raise RuntimeError(f"error_already_set: REPLACED BY {type(exc).__name__}") from None
        raise AssertionError("the signal did not arrive")


@pytest.mark.parametrize("signum, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)])
def test_a_signal_during_conversion_is_an_interrupt_not_a_conversion_error(signum, raised, monkeypatch):
    pytest.importorskip("tensorflow")
    from converters import tflite

    monkeypatch.setattr(tflite, "_converter", lambda tf, model: _ConverterHitBySignal(signum))
    with signals_as_interrupts(), pytest.raises(raised):  # not ModelError("TFLite float32 conversion failed ...")
        tflite.convert(None, "float32")


def test_a_file_set_is_put_in_place_whole_or_not_at_all(tmp_path):
    """evaluate's files: a Ctrl-C while they were written left new metrics beside the last run's plots."""
    from firmware_host.atomic import file_set

    names = ["e_metrics.json", "e_plot.png", "e_other.json"]
    for n in names:
        (tmp_path / n).write_text("old")
    (tmp_path / "mine.txt").write_text("a person's")
    with pytest.raises(KeyboardInterrupt), file_set(tmp_path, names) as stage:
        (stage / "e_metrics.json").write_text("new")
        raise KeyboardInterrupt
    assert {n: (tmp_path / n).read_text() for n in names} == dict.fromkeys(names, "old")
    with file_set(tmp_path, names) as stage:  # this time no e_other.json: the old one no longer belongs to the set
        for n in names[:2]:
            (stage / n).write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e_metrics.json", "e_plot.png", "mine.txt"]
    assert (tmp_path / "e_plot.png").read_text() == "new" and (tmp_path / "mine.txt").read_text() == "a person's"


def test_a_signal_held_while_the_held_block_fails_is_still_raised(tmp_path):
    """Ctrl-C held back during a pool's submit, which then failed on a pipe the Ctrl-C broke: the interrupt was lost,
    and the broken pipe reported as a failure to write the --json file."""
    import errno

    from firmware_host.atomic import _interrupts_held, atomic_path

    with signals_as_interrupts(), pytest.raises(KeyboardInterrupt), _interrupts_held():
        os.kill(os.getpid(), signal.SIGINT)
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")
    with signals_as_interrupts(), pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "x.json"):
        with contextlib.suppress(KeyboardInterrupt):  # an interrupt something swallowed, then its broken pipe
            os.kill(os.getpid(), signal.SIGINT)
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads a process's signal mask from /proc (Linux)")
def test_the_forkserver_starts_with_ctrl_c_blocked_until_it_ignores_it():
    """Ctrl-C goes to the whole process group: while the server imported its preloads it printed a traceback."""
    code = (
        "import multiprocessing.forkserver as f, time\n"
        "from firmware_host.decode import _process_pool\n"
        "pool = _process_pool(1)\n"
        "status = open(f'/proc/{f._forkserver._forkserver_pid}/status').read()\n"
        "print(next(l for l in status.splitlines() if l.startswith('SigBlk')).split()[1])\n"
        "pool.shutdown()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1], 16) & (1 << (signal.SIGINT - 1))


@click.command("write-then-stop")
@click.argument("out")
@click.option("--stop-before", is_flag=True)
def write_then_stop(out, stop_before):
    """A command that puts a folder and a file in place, then is interrupted (as while printing its results)."""
    from firmware_host.atomic import atomic_path, staged_dir

    if stop_before:
        raise KeyboardInterrupt
    with staged_dir(Path(out) / "export") as tmp:
        (tmp / "model.bin").write_bytes(b"new")
    with atomic_path(Path(out) / "report.json") as tmp:
        tmp.write_text("{}")
    raise KeyboardInterrupt


def test_an_interrupt_after_an_output_is_in_place_says_it_was_written(tmp_path, monkeypatch):
    """A review: Ctrl-C while convert printed its table, after the new export had been swapped in, said "earlier
    results are intact" (exit 130), and a script took the old export to be there. The line names what was written."""
    from click.testing import CliRunner

    from edgecell import cli as cli_mod

    monkeypatch.setitem(cli_mod.COMMANDS, "write-then-stop", f"{__name__}:write_then_stop")
    res = CliRunner().invoke(cli_mod.cli, ["write-then-stop", str(tmp_path)])
    assert res.exit_code == 130, res.output
    said = " ".join((res.stderr or res.output).split())
    assert said.endswith(
        f"Interrupted: nothing half-written was kept; {tmp_path / 'export'}, {tmp_path / 'report.json'} were written in full before it (replacing any earlier)."
    ), said
    res = CliRunner().invoke(cli_mod.cli, ["write-then-stop", str(tmp_path), "--stop-before"])  # the next command starts afresh
    assert res.exit_code == 130 and " ".join((res.stderr or res.output).split()).endswith("earlier results are intact.")
