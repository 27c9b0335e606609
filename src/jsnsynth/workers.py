"""Items of a long run computed in order, in this process or by worker processes.

The dataset builder's pairs and the validation harnesses' pairs are independent of each other,
so ``num_proc`` processes compute them side by side, and :func:`ordered_results` hands them
back in the items' order, whatever the number of processes: the run's output is the same.
Every process computes with one thread per numerical library (:mod:`jsnsynth.threads`), this
one included when it computes alone, so that the last bits do not depend on the machine either.

What a worker needs besides the item (a joint source, a method) is the *job*: pickled here, sent
once to each worker and handed there to a ``setup`` function of the caller's module, which keeps
it where its ``compute`` function finds it. ``setup`` and ``compute`` are module-level functions,
which a spawned worker imports by name.
"""

from __future__ import annotations

import collections
import collections.abc
import contextlib
import itertools
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from jsnsynth.errors import InputError, WorkerError, exception_line
from jsnsynth.threads import single_threaded

#: Tasks queued per worker: enough to keep the workers busy while the parent writes what it was
#: handed, few enough that the results waiting to be written stay small.
TASKS_AHEAD_PER_WORKER = 2

# this worker's state: set once per process by _init_worker
_STATE: dict[str, Any] = {}


def check_num_proc(num_proc: int) -> int:
    """Refuse a number of worker processes that is not a whole number of at least 1; return it.

    Raises:
        InputError: naming the value (``validate_dataset(num_proc=0)`` ran in this process, while
            ``build_dataset`` refused it in the command line's words).
    """
    if isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1:
        raise InputError(f"worker processes (num_proc, --num-proc) must be a whole number of at least 1, got {num_proc!r}")
    return num_proc


def ordered_results(
    setup: Callable[[Any], None],
    compute: Callable[[Any], Any],
    job: Any,
    items: Iterable,
    num_proc: int,
    scratch_dir: Path | None = None,
    *,
    items_per_task: int = 1,
    what: str = "item",
    job_name: str = "the job",
    resume_hint: str = "rerun the same command to resume",
) -> Iterator[Any]:
    """``compute(item)`` of each of ``items`` in their order, after ``setup(job)``, computed in
    this process or by ``num_proc`` spawned workers.

    ``items`` are drawn as the workers need them (a few tasks ahead), so an iterator over a
    large dataset is never held whole. The workers hand their results over in files of
    ``scratch_dir`` (made afresh, removed once done) and only the files' names through the
    pool's pipe: a worker killed while it wrote a large result left half a message there, and the
    pool's manager waited for the rest for ever. A warning a worker gives is shown here, once for
    each text, whatever the number of workers.

    Args:
        setup, compute: module-level functions (a spawned worker imports them by name).
        job: what ``setup`` receives, pickled once for each worker.
        items: what ``compute`` receives, one at a time (each picklable).
        num_proc: worker processes; 1 computes here.
        scratch_dir: where the workers' results wait for the parent: for large results beside
            the run's output, not in the system's temporary folder, which is often memory; None
            for a temporary folder of the system's.
        items_per_task: items a worker computes per task (small, quick items go in groups).
        what: the items' name in messages (``pair``).
        job_name: the job's name in messages (``the joint source``).
        resume_hint: what the message of a run stopped by a killed worker tells the user to do.

    Raises:
        InputError: the job cannot be sent to a worker process, or a worker cannot receive it.
        WorkerError: a worker process stopped abruptly (killed, out of memory).
    """
    if num_proc <= 1:
        # as the workers compute: one thread per library, so that the results are the same
        with single_threaded():
            setup(job)
            for item in items:
                yield compute(item)
        return
    try:
        payload = pickle.dumps((setup, job, _picklable(warnings.showwarning)))
    except Exception as exc:  # noqa: BLE001  (whatever pickling raised)
        raise InputError(f"{job_name} cannot be sent to a worker process ({exception_line(exc)}); "
                         "use one process (num_proc=1)") from None
    pending = iter(items)
    tasks = iter(lambda: list(itertools.islice(pending, items_per_task)), [])
    own_scratch = scratch_dir is None
    if own_scratch:
        scratch_dir = Path(tempfile.mkdtemp(prefix="jsnsynth-workers-"))
    # a process pool that notices a worker that died: multiprocessing.Pool waited for its results for ever
    executor = ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(payload, job_name))
    if not own_scratch:
        shutil.rmtree(scratch_dir, ignore_errors=True)  # a killed run's
        scratch_dir.mkdir(parents=True)
    queued: collections.deque[Future] = collections.deque()
    exhausted = False

    def queue_tasks() -> None:
        nonlocal exhausted
        for _ in range(num_proc * TASKS_AHEAD_PER_WORKER - len(queued)):
            task = next(tasks, None)
            if task is None:
                exhausted = True
                return
            queued.append(executor.submit(_task_results, compute, task, str(scratch_dir)))

    shown: set[tuple[str, type]] = set()
    done = 0
    try:
        # the workers are started by the first tasks queued: with the thread-count variables at 1
        # they load BLAS/OpenMP single-threaded (one worker per core already; the same results either way)
        with single_threaded(), _interrupt_ignored():
            queue_tasks()
        while queued:
            results_file = Path(queued.popleft().result())
            results = pickle.loads(results_file.read_bytes())
            results_file.unlink()
            queue_tasks()
            for result, caught in results:
                for message, category in caught:
                    if (message, category) not in shown:
                        shown.add((message, category))
                        warnings.warn(message, category, stacklevel=2)
                done += 1
                yield result
    except BrokenProcessPool:  # from a task's result, or from queueing one once the pool broke
        # before any result: most often a script that starts workers at import (each spawned
        # worker runs the script's module again) rather than a kill
        start = "" if done else ("; or the workers could not start: a script that starts worker processes "
                                 "needs `if __name__ == \"__main__\":` around it")
        of = f" of {len(items)}" if isinstance(items, collections.abc.Sized) else ""
        raise WorkerError(
            f"a worker process stopped abruptly (killed, or out of memory?) after {done}{of} "
            f"{what}(s); {resume_hint}, with fewer worker processes if memory ran out{start}"
        ) from None
    finally:
        # every result handed over: the workers are idle and stopped at once; on an error or an
        # interrupt, the tasks not begun are dropped and those under way end on their own (their
        # files, written into a folder gone, with them)
        executor.shutdown(wait=exhausted and not queued, cancel_futures=True)
        shutil.rmtree(scratch_dir, ignore_errors=True)


def _picklable(function: Callable) -> Callable | None:
    """``function`` if a spawned worker can receive it (a module-level function), else None."""
    try:
        pickle.dumps(function)
    except Exception:  # noqa: BLE001  (a lambda, a closure, a bound method of something unpicklable)
        return None
    return function


@contextlib.contextmanager
def _interrupt_ignored() -> Iterator[None]:
    """SIGINT ignored in this process for the block: processes started in it ignore it for good
    (Python keeps an inherited SIG_IGN).

    Ctrl-C reaches the whole process group. Workers that took it printed their tracebacks (from
    their start-up on) and once left the parent waiting on a pool whose workers had died; the
    parent alone stops the run and says how to resume it.
    """
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread, which alone gets Ctrl-C
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _init_worker(payload: bytes, job_name: str) -> None:
    """Start a worker process on the pickled ``(setup, job, show_warning)``.

    Unpickled here rather than by multiprocessing: a class the worker cannot import (one defined
    in a notebook or at the prompt, whose ``__main__`` a spawned process does not have) failed in
    the process's start-up, which printed a traceback per worker; a ``Pool`` started new workers
    that failed alike, for ever. The failure is kept for the first task to raise.
    """
    import cv2

    cv2.setNumThreads(1)  # one worker per core: one thread in it (see jsnsynth.threads)
    _STATE.clear()
    try:
        setup, job, show_warning = pickle.loads(payload)
    except Exception as exc:  # noqa: BLE001  (whatever unpickling raised: reported by the task)
        _STATE["failure"] = (
            f"{job_name} cannot be sent to a worker process ({exception_line(exc)}): define its "
            "class or function in an importable module, not in a notebook or at the prompt, or use one "
            "process (num_proc=1)"
        )
        return
    if show_warning is not None:  # a worker shows warnings as its parent does (the CLI: one line)
        warnings.showwarning = show_warning
    # whatever the job prints (a plug-in method): the jsnsynth commands keep stdout for their output
    sys.stdout = sys.stderr
    _STATE["worker"] = True
    try:
        setup(job)
    except Exception as exc:  # noqa: BLE001  (a method the parent imports and a fresh process cannot)
        reason = str(exc) if isinstance(exc, InputError) else exception_line(exc)
        _STATE["failure"] = (f"{job_name} cannot be set up in a worker process ({reason}): define it in an "
                             "importable module, not in a notebook or at the prompt, or use one process (num_proc=1)")
        return
    _STATE["parent_pid"] = os.getppid()


def in_worker() -> bool:
    """Whether this process is a worker of :func:`ordered_results` (for set-ups that differ there,
    such as a process-wide heap setting the jsnsynth commands make in their own process)."""
    return bool(_STATE.get("worker"))


def _task_results(compute: Callable[[Any], Any], items: list, results_dir: str) -> str:
    """:func:`_result_and_warnings` of each of ``items``, in a worker process, pickled into a file
    of ``results_dir`` whose name is returned."""
    if "failure" in _STATE:
        raise InputError(_STATE["failure"])
    results = []
    for item in items:
        if os.getppid() != _STATE["parent_pid"]:
            # the parent was killed: a worker of a spawn pool is not stopped with it, and went on
            # through the tasks queued for a parent no longer there, writing their results
            shutil.rmtree(results_dir, ignore_errors=True)
            os._exit(1)
        results.append(_result_and_warnings(compute, item))
    _STATE["tasks"] = _STATE.get("tasks", 0) + 1
    path = Path(results_dir) / f"{os.getpid()}-{_STATE['tasks']}.pickle"
    partial = path.with_suffix(".partial")
    partial.write_bytes(pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL))
    os.replace(partial, path)
    return str(path)


def _result_and_warnings(compute: Callable[[Any], Any], item: Any) -> tuple[Any, list[tuple[str, type]]]:
    """``compute(item)`` in a worker process, with the warnings it gave, for the parent to show
    once each: every worker loads what it is given, so a warning about one input (an ``lsn``
    crop that looks inverted) came once per worker."""
    failure = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = compute(item)
        except BaseException as exc:  # noqa: BLE001  (raised again below, once the warnings are out)
            failure = exc
    if failure is not None:
        # the item failed: what was said about it on the way (a crop that looks inverted, then
        # no bone found) is shown here, as the parent gets only the error
        for warning in caught:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
        raise failure
    return result, [(str(w.message), w.category) for w in caught]
