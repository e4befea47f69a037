"""One executor layer for every parallel stage: a *stage* says what one batch is, an *executor*
owns where batches run (after datatrove's executors and NeMo-Curator's stages).

A stage (:class:`Stage`) has

* ``setup()`` -- heavy per-worker state (the ingest stage's spaCy splitter), run **once per
  worker** by the executor before that worker's first batch, never per batch;
* ``process_batch(batch, *args)`` -- one batch's result; state a concurrent caller varies (the
  ingest stage's previous content hashes) goes by argument, not on the stage;
* ``merge(parts)`` -- only for :meth:`ProcessExecutor.process`, which cuts one batch into a
  chunk per worker: the chunks' results, in order, as one result.

A stage is pickled *without* its set-up state (it travels to a worker, which sets it up there).

Executors, both with the same calls (``map`` over batches, ``process`` one batch, ``close``):

* :class:`InlineExecutor` -- the batches run in the calling process (thread), on one stage set up
  once. Pickled into another process (a Prefect process or Dask worker running a task), it sets
  its stage up once in *that* process, the first time it is used there, and reuses it for every
  later batch of the same executor in that process.
* :class:`ProcessExecutor` -- a pool of ``workers`` processes owned by the executor; each worker
  sets the stage up once when it starts (they start at once, in the background, so they set up
  while the caller is still planning). ``map`` sends one batch per call; ``process`` cuts a batch
  into one chunk per worker (a caller that waits on each batch, such as a thread task, keeps every
  worker busy). Results come back pickled, in batch order. It stays in the process that made it
  (pickling it is an error: a pool cannot travel).

:func:`make_executor` picks between them, and :func:`resolve_workers` says what a ``workers``
setting of 0 means: the one place that decides parallelism (the ingest driver, the scan's header
reads and the build-shards flow all ask these two). An exception a stage raises in ``process_batch``
propagates to the caller (the stage itself turns bad *input* into its result: the ingest stage's
reject records); the executor never swallows it.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, cast

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
S = TypeVar("S", bound="Stage")


class Stage(Protocol[R_co]):
    def setup(self) -> None:
        """Build what every batch of this worker needs (once per worker)."""

    def process_batch(self, batch: Any, *args: Any) -> R_co:
        """One batch's result."""


class MergingStage(Stage[R], Protocol[R]):
    """A stage :meth:`ProcessExecutor.process` can cut a batch of into chunks."""

    def merge(self, parts: list[R]) -> R:
        """The chunks' results, in order, as one result."""


# ------------------------------------------------------------------------------------------------
# a worker process's own stages: filled by the worker itself (a pool worker's initializer, or an
# InlineExecutor unpickled in a runner's worker), keyed by the executor that sent them; the
# process that made an executor never reads it (it holds its executor, and passes it on)
_WORKER_STAGES: dict[str, Any] = {}
_WORKER_LOCK = threading.Lock()


def _worker_stage(token: str, stage: S) -> S:
    """This process's set-up stage of the executor ``token`` (set up now on first use)."""
    with _WORKER_LOCK:
        ready = _WORKER_STAGES.get(token)
        if ready is None:
            stage.setup()
            _WORKER_STAGES[token] = ready = stage
        return ready


def _init_pool_worker(token: str, stage: Stage) -> None:
    _worker_stage(token, stage)


def _pool_process(token: str, batch: Any, *args: Any) -> Any:
    return _WORKER_STAGES[token].process_batch(batch, *args)


def _pool_ready(_: Any = None) -> int:
    return os.getpid()


# ------------------------------------------------------------------------------------------------
class InlineExecutor(Generic[R]):
    """Batches run in the calling process on one stage, set up once (on the first batch: an
    executor that gets no batch never sets up). Thread-safe: concurrent callers share the stage."""

    workers = 1

    def __init__(self, stage: Stage[R]) -> None:
        self.stage = stage
        self.token = uuid.uuid4().hex
        self._travelled = False  #: unpickled in another process: set up once per process there
        self._ready: Stage[R] | None = None
        self._lock = threading.Lock()

    def _stage(self) -> Stage[R]:
        if self._ready is None:
            with self._lock:
                if self._ready is None:
                    if self._travelled:
                        self._ready = _worker_stage(self.token, self.stage)
                    else:
                        self.stage.setup()
                        self._ready = self.stage
        return self._ready

    def process(self, batch: Any, *args: Any) -> R:
        """One batch's result."""
        return self._stage().process_batch(batch, *args)

    def map(self, batches: Iterable[Any], *args: Iterable[Any]) -> Iterator[R]:
        """Each batch's result, in order (``args``: one iterable per extra argument, as ``map``)."""
        for items in zip(batches, *args):
            yield self.process(*items)

    def close(self) -> None:
        self._ready = None

    def __enter__(self) -> InlineExecutor[R]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # travelling to another process (a task runner's worker): the stage goes unset-up, and is set
    # up there once per process, shared by every batch of this executor that process runs
    def __getstate__(self) -> dict:
        return {"stage": self.stage, "token": self.token}

    def __setstate__(self, state: dict) -> None:
        self.stage, self.token = state["stage"], state["token"]
        self._travelled, self._ready, self._lock = True, None, threading.Lock()


class ProcessExecutor(Generic[R]):
    """A pool of ``workers`` processes, each with the stage set up once at its start."""

    def __init__(self, stage: Stage[R], workers: int, mp_context=None) -> None:
        self.stage = stage
        self.workers = max(1, int(workers))
        self.token = uuid.uuid4().hex
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers, mp_context=mp_context, initializer=_init_pool_worker, initargs=(self.token, stage)
        )
        self._started = threading.Thread(target=self._start, daemon=True, name="offclip-executor-start")
        self._started.start()

    def _start(self) -> None:
        # the pool starts a worker per call that finds none idle: `workers` calls start them all
        try:
            for _ in range(self.workers):
                self._pool.submit(_pool_ready)
        except RuntimeError:  # closed before it started: nothing to warm up
            pass

    def map(self, batches: Iterable[Any], *args: Iterable[Any]) -> Iterator[R]:
        """Each batch's result, in order; one call per batch, every batch submitted at once."""
        return self._pool.map(_pool_process, repeat(self.token), batches, *args)

    def process(self, batch: Sequence[Any], *args: Any) -> R:
        """One batch's result, its chunks (one per worker) run in parallel and merged in order by
        the stage's ``merge``; ``args`` go with every chunk."""
        size = -(-len(batch) // self.workers) or 1
        chunks = [
            self._pool.submit(_pool_process, self.token, batch[i : i + size], *args) for i in range(0, len(batch), size)
        ]
        return cast("MergingStage[R]", self.stage).merge([chunk.result() for chunk in chunks])

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ProcessExecutor[R]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __reduce__(self):
        raise TypeError(
            "a ProcessExecutor stays in the process that made it (its pool cannot travel); "
            "give work that runs elsewhere an InlineExecutor"
        )


Executor = InlineExecutor | ProcessExecutor


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity), capped by a cgroup v2 CPU quota (a
    container's ``cpu.max``): what "one per core" means everywhere in offclip."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def resolve_workers(workers: int) -> int:
    """What a ``workers`` setting means: 0 (the default everywhere) one per available CPU
    (:func:`available_cpus`), else itself."""
    return int(workers) or available_cpus()


def make_executor(
    stage: Stage[R],
    workers: int,
    batches: int | None = None,
    *,
    in_runner_workers: bool = False,
    from_threads: bool = False,
) -> Executor:
    """Where a stage's batches run, the one rule: in place (:class:`InlineExecutor`) for one
    worker, at most one batch (a pool would only add its start), or when the batches already run
    in a task runner's own worker processes (``in_runner_workers``: Prefect's process runner,
    Dask); else a pool of ``workers`` processes (0: one per core). A pool made in a process with
    threads (``from_threads``: a flow run) starts its workers from a fork server that imports the
    stage's ``preload`` modules once (:func:`forkserver_context`); otherwise the platform's default."""
    workers = resolve_workers(workers)
    if in_runner_workers or workers <= 1 or (batches is not None and batches <= 1):
        return InlineExecutor(stage)
    context = forkserver_context(getattr(stage, "preload", ())) if from_threads else None
    return ProcessExecutor(stage, workers, mp_context=context)


def forkserver_context(preload: Sequence[str]):
    """A multiprocessing context for workers started from a process with threads (a flow run).

    ``forkserver`` where the platform has it: one fresh, single-threaded process imports
    ``preload`` (and the caller's main module) once, and every worker is forked from it, so
    workers start in milliseconds, and safely beside a server's threads; the server lives on for
    later pools in this process. ``spawn`` elsewhere (each worker imports everything itself).
    """
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    modules = ["__main__", *preload]
    main = getattr(sys.modules.get("__main__"), "__spec__", None)
    if main is not None and main.name and not main.name.endswith("__main__"):
        modules.append(main.name)  # e.g. ``python -m prefect.engine``: each worker would import it again
    ctx.set_forkserver_preload(modules)  # no effect once this process's fork server runs
    return ctx
