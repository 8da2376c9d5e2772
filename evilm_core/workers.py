"""Worker processes (docs/reliability.md, "Workers"): every pool evilm starts is made of these.

- A worker dies with its parent. `die_with_parent` runs first in every worker (the initializer
  of the data commands' pools, the `worker_init_fn` of every DataLoader): on Linux it asks the
  kernel for SIGKILL when the parent dies (`prctl(PR_SET_PDEATHSIG)`), elsewhere a thread
  watches the parent's pid. A parent killed with SIGKILL never leaves workers writing into its
  output.
- A worker that dies costs its item, not the run. `run_jobs` is the pool of `evilm data shards`
  and `evilm data check`: each job is a list of items (clips); before each item the worker says
  which one it is on, so when a decoder segfaults or the kernel kills a worker for its memory,
  the parent knows the item, records it as skipped with the cause, starts a new worker and runs
  the job again without it. Other jobs go on meanwhile.

Light to import (no evilm module above errors): the spawned workers import only what their job
needs.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import wait
from typing import Any, Callable, Iterator, Sequence

from evilm_core.errors import EvilmError

log = logging.getLogger("evilm.workers")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
Mark = Callable[[int], None]  # mark(k): the worker is starting item k of its job


def die_with_parent(_worker_id: int | None = None, parent_pid: int | None = None) -> None:
    """In a worker process: end when the parent process ends, however it ends (also a DataLoader
    worker_init_fn, hence the unused worker id). The parent may die before this runs: then the
    worker has been re-parented already and exits now."""
    if parent_pid is None:
        parent = multiprocessing.parent_process()
        parent_pid = parent.pid if parent is not None else os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    else:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:
        os._exit(1)


PARENT_ENV = "EVILM_PARENT_PID"  # the pid of the evilm process that starts workers, for them to compare


def die_with_parent_when_spawned() -> None:
    """die_with_parent, in a process multiprocessing has spawned from the `evilm` command: the CLI
    calls this as it is imported. A spawned worker imports the program's main module again (as
    `__mp_main__`) before anything else, so from its first moment it dies with its parent, not only
    once its pool's initializer has run (after seconds of importing torch and unpickling its
    dataset). multiprocessing does not know the parent yet at that point: the command left its pid
    in the environment (`mark_parent`), so a worker whose parent died before this ran exits too."""
    if not spawned():
        return
    expected = os.environ.get(PARENT_ENV, "")
    die_with_parent(parent_pid=int(expected) if expected.isdigit() else None)
    mark_parent()  # for the processes this worker may start in turn


def spawned() -> bool:
    """This process is a multiprocessing child started by spawn: the main module it runs (again) is
    named `__mp_main__`. In any other process that has imported multiprocessing, sys.modules holds
    `__mp_main__` too, but as an alias of a module named `__main__`."""
    return getattr(sys.modules.get("__mp_main__"), "__name__", None) == "__mp_main__"


def mark_parent() -> None:
    """This process is the one its workers must outlive (the CLI's main() calls it)."""
    os.environ[PARENT_ENV] = str(os.getpid())


def _watch_parent(pid: int) -> None:
    while os.getppid() == pid:
        time.sleep(1.0)
    os._exit(1)


def init_worker(initializer: Callable | None = None, worker_id: int | None = None) -> None:
    """die_with_parent, then the pool's own initializer."""
    die_with_parent()
    if initializer is not None:
        initializer(worker_id) if worker_id is not None else initializer()


class WorkerInit:
    """A DataLoader worker_init_fn: die_with_parent, then `then(worker_id)` when given (picklable,
    so spawned workers receive it)."""

    def __init__(self, then: Callable[[int], None] | None = None):
        self.then = then

    def __call__(self, worker_id: int) -> None:
        init_worker(self.then, worker_id)

    def __eq__(self, other) -> bool:  # loaders are cached by their arguments (engine/runtime.py)
        return isinstance(other, WorkerInit) and other.then == self.then

    def __hash__(self) -> int:
        return hash((WorkerInit, self.then))


def death_cause(exitcode: int | None) -> str:
    """How a worker ended, in words: 'killed by SIGSEGV', 'exit code 3'."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        why = {"SIGKILL": " (the kernel's out-of-memory killer sends it)", "SIGSEGV": " (a crash in native code)",
               "SIGBUS": " (a crash in native code)", "SIGABRT": " (a native library aborted)"}.get(name, "")
        return f"the worker decoding it was killed by {name}{why}"
    return f"the worker decoding it exited with code {exitcode}"


LOADER_PIPE_ERRORS = (ConnectionResetError, BrokenPipeError, EOFError)  # a dead loader worker's pipe


def loader_worker_death(err: BaseException, pipe_errors: bool = False) -> EvilmError | None:
    """The error a run ends with when a DataLoader worker died (a decoder's segfault, the
    out-of-memory killer), or None when `err` is something else: PyTorch's "DataLoader worker ...
    is killed by signal" RuntimeError, which its SIGCHLD handler may raise at any point of the main
    process (also while another error unwinds), or, with `pipe_errors` (around the loader's own
    iteration), the broken pipe to the dead worker that can come first. A DataLoader cannot give
    the clip back (docs/reliability.md, "Workers"): `evilm data check` finds it."""
    if isinstance(err, RuntimeError) and "DataLoader worker" in str(err):
        detail = str(err).strip().splitlines()[0][:200]
    elif pipe_errors and isinstance(err, LOADER_PIPE_ERRORS):
        detail = f"its pipe closed: {type(err).__name__}"
    else:
        return None
    return EvilmError(f"a data loader worker process died ({detail}): a video whose decoder crashes, or the "
                      "out-of-memory killer. `evilm data check INPUT` finds the clip (it decodes each in a process "
                      "that may die and lists the one that kills it); drop it from the manifest, or build shards "
                      "with `evilm data shards`, which skip it. The work done is kept: the same command (training: "
                      "with --resume) continues")


# ---------------------------------------------------------------------------- the pool


def _serve(conn, initializer: Callable | None) -> None:
    """A worker: run the jobs the parent sends until it sends None."""
    init_worker(initializer)
    while True:
        msg = conn.recv()
        if msg is None:
            return
        index, fn, job, skip = msg
        try:
            result = fn(job, skip=skip, mark=lambda k: conn.send(("at", index, k)))
        except BaseException as err:  # the parent raises it again (an EvilmError stays one)
            conn.send(("error", index, _portable(err)))
            continue
        conn.send(("done", index, result))


def _portable(err: BaseException) -> BaseException:
    """`err` if it survives pickling, else the same message as an EvilmError (user errors) or a
    RuntimeError carrying the worker's traceback (bugs)."""
    try:
        return pickle.loads(pickle.dumps(err))
    except Exception:
        if isinstance(err, EvilmError):
            return EvilmError(str(err))
        return RuntimeError("".join(traceback.format_exception(err)))


class _Worker:
    def __init__(self, ctx, initializer: Callable | None):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, initializer), daemon=True)
        self.proc.start()
        child.close()
        self.job: int | None = None  # the job it runs
        self.item: int | None = None  # the item of that job it is on

    def stop(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def run_jobs(fn: Callable[..., Any], jobs: Sequence[Any], workers: int, initializer: Callable | None = None,
             context: str = "spawn") -> Iterator[Any]:
    """`fn(job, skip={item: cause}, mark=mark)` for every job in `workers` processes; yields the
    results in job order (as `Pool.map`). `fn` must call `mark(k)` before item k of its job and
    treat every item of `skip` as failed with that cause (`fn` at module level: spawned workers
    import it). A worker that dies is replaced and its job runs again with its item in `skip`.
    An exception raised by `fn` ends the run and is raised here."""
    ctx = multiprocessing.get_context(context)
    todo = collections.deque(range(len(jobs)))
    skips: dict[int, dict[int, str]] = {i: {} for i in range(len(jobs))}
    results: dict[int, Any] = {}
    pool: list[_Worker] = []
    emitted = 0
    try:
        while emitted < len(jobs):
            _assign(ctx, pool, todo, fn, jobs, skips, workers, initializer)
            busy = [w for w in pool if w.job is not None]
            if busy:
                for w in _ready(busy):
                    _receive(w, pool, todo, skips, results)
            while emitted in results:
                yield results.pop(emitted)
                emitted += 1
    finally:
        for w in pool:
            w.stop()


def _assign(ctx, pool: list[_Worker], todo: collections.deque, fn, jobs, skips, workers: int, initializer) -> None:
    while todo:
        idle = next((w for w in pool if w.job is None), None)
        if idle is None and len(pool) < max(1, workers):
            idle = _Worker(ctx, initializer)
            pool.append(idle)
        if idle is None:
            return
        index = todo.popleft()
        idle.job, idle.item = index, None
        idle.conn.send((index, fn, jobs[index], dict(skips[index])))


def _ready(busy: list[_Worker]) -> list[_Worker]:
    """The busy workers with a message or an exit to look at."""
    by_handle = {}
    for w in busy:
        by_handle[w.conn] = by_handle[w.proc.sentinel] = w
    return list(dict.fromkeys(by_handle[h] for h in wait(list(by_handle))))


def _receive(w: _Worker, pool: list[_Worker], todo: collections.deque, skips, results: dict) -> None:
    """Read what worker `w` sent; a worker that died has its job run again without its item."""
    try:
        while w.conn.poll():
            kind, index, value = w.conn.recv()
            if kind == "at":
                w.item = value
            elif kind == "done":
                results[index], w.job, w.item = value, None, None
                return
            else:
                raise value
        if w.proc.is_alive():
            return
    except (EOFError, ConnectionError):
        pass
    w.proc.join()
    index, item = w.job, w.item
    pool.remove(w)
    w.conn.close()
    if item is None or item in skips[index]:  # it died before its first item: nothing to blame
        raise EvilmError(f"a worker process died before it began its work (exit status {w.proc.exitcode}: a "
                         "negative number is the signal that ended it); see the log above")
    skips[index][item] = death_cause(w.proc.exitcode)
    log.warning("a worker died on item %d of job %d (%s); a new worker runs the job again without it", item, index,
                skips[index][item])
    todo.appendleft(index)
