"""Drawing a report's figures: many at once in worker processes, one per core, or in this process.

Each figure is a job, path -> (function, data, title, caption), the function one of gradbench.reports.plots'
(or any that can be pickled); this module decides where it is drawn, never how.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys


def _draw_one(path, fn, data, title) -> None:
    try:
        fn(data, path, title)
    except OSError as e:  # a full disk, a read-only plots/: name the figure, not matplotlib's stream
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None


def _draw_share(share: list, parent: int | None = None) -> tuple[int, BaseException] | None:
    """Draws (index, path, (function, data, title, caption)) items in order: (index, error) of the first that
    fails, or None. `parent`: the process that asked (a worker stops once it is gone)."""
    for index, path, (fn, data, title, _caption) in share:
        if parent is not None and os.getppid() != parent:
            return None
        try:
            _draw_one(path, fn, data, title)
        except Exception as e:  # noqa: BLE001 (given back to the process that asked for the figures)
            return index, e
    return None


PARALLEL_FIGURES = 8  # from this many figures on, they are drawn by worker processes, one per core (at most 4)
# A worker: a Ctrl-C ends it quietly (SystemExit: a figure being saved leaves no partial file), at any point.
_WORKER = ("import signal, sys; signal.signal(signal.SIGINT, lambda *_: sys.exit(130)); "
           "signal.signal(signal.SIGPIPE, signal.SIG_DFL); from gradbench.reports import drawing; "
           "drawing._worker(int(sys.argv[1]))")


def _worker(parent: int) -> None:
    """Draws the figures pickled on standard input; writes (index, error) of the first that fails, or None, on
    standard output. Anything else it cannot do (unpickle a function defined in the caller's script, pickle an
    error) it leaves unanswered, and the caller draws those figures itself."""
    answer = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what the figures print goes to standard error, not into the answer
    sys.stdout = sys.stderr
    try:
        share = pickle.load(sys.stdin.buffer)
    except Exception:  # noqa: BLE001
        return
    try:
        result = pickle.dumps(_draw_share(share, parent))
    except Exception:  # noqa: BLE001
        return
    answer.write(result)
    answer.close()


def draw(jobs: dict) -> None:
    """Draws every figure of `jobs` (path -> (function, data, title, caption)); raises the first error (in the
    order of `jobs`).

    Drawing is most of a report's time and each figure is independent, so from PARALLEL_FIGURES figures on
    they are dealt to worker processes, one per core: fresh interpreters (`_WORKER`, the figures pickled to
    their standard input; `-P`: no module of the current directory), not forks of a process whose JAX threads
    a fork would copy, nor multiprocessing's spawned children, which import the caller's main script again.
    The files are the same either way. Figures no worker could take (no process to be had, a function that
    cannot be pickled, a worker that ended without an answer) are drawn in this process.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(cores, 4, len(jobs) // 2)
    items = [(i, path, job) for i, (path, job) in enumerate(jobs.items())]
    procs, shares, results = [], [], []
    if len(jobs) >= PARALLEL_FIGURES and workers >= 2 and sys.executable:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if isinstance(p, str) and p)}
        command = [sys.executable, "-P", *(f"-W{w}" for w in sys.warnoptions), "-c", _WORKER, str(os.getpid())]
        try:
            shares = [pickle.dumps(items[k::workers]) for k in range(workers)]
            for _ in range(workers):
                procs.append(subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        except (OSError, pickle.PicklingError, AttributeError, TypeError):
            # no process to be had (a process limit, an embedded interpreter), or a figure that cannot be
            # pickled (a lambda): drawn here
            _end(procs)
            procs = []
    if not procs:
        results.append(_draw_share(items))
    else:
        try:
            for proc, share in zip(procs, shares):
                try:
                    proc.stdin.write(share)
                    proc.stdin.close()
                except BrokenPipeError:  # the worker ended first: its figures are drawn here below
                    pass
            for k, proc in enumerate(procs):
                out = proc.stdout.read()
                try:
                    answered = proc.wait() == 0 and out
                    results.append(pickle.loads(out) if answered else _draw_share(items[k::workers]))
                except Exception:  # noqa: BLE001 (an error the worker pickled that cannot be rebuilt here)
                    results.append(_draw_share(items[k::workers]))
        finally:  # interrupted: no worker outlives the report
            _end(procs)
    failed = [r for r in results if r is not None]
    if failed:
        raise min(failed, key=lambda r: r[0])[1]


def _end(procs) -> None:
    """Kills the workers still running, reaps them and closes their pipes."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
