"""Task runners selected by a flow parameter: Prefect's own thread/process pools locally,
prefect-dask's DaskTaskRunner (a local cluster, or an existing one by address) to scale out;
and the flow's executor for ``pipeline.ingest.run_ingest`` (the driver ``offclip ingest`` runs
too): :class:`TaskExecutor` makes each batch a Prefect task run on the task runner, and the task
hands it to the executor that ``executor.make_executor`` picks for that runner.

A task runner runs *tasks* (Prefect's bookkeeping: states, retries, progress); the executor runs
the *stage* (where the decoding happens, set up once per worker). Per runner:

* ``thread``  -- tasks are threads of the flow's process, sharing one GIL: the executor is a
  :class:`ProcessExecutor` of ``workers`` processes (forked from a fork server), each batch cut
  into a chunk per worker; the runner has twice as many threads, which mostly wait on it.
* ``process`` / ``dask`` -- the runner's own worker processes are the parallelism: the executor is
  an :class:`InlineExecutor`, pickled into each task and set up once per runner worker process.

``workers`` = 1, or a single batch, is an InlineExecutor under every runner (the rule is
``make_executor``'s, in ``pipeline/executor.py``: the one place that decides parallelism).

For clusters, Ray works the same way through ``prefect-ray``'s ``RayTaskRunner`` (add a branch
here once the package is installed), and a Kubernetes work pool runs the whole flow in pods —
see docs/orchestration.md, "Scaling out".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from offclip.pipeline.executor import Executor, Stage, make_executor

RUNNERS = ("thread", "process", "dask")


class TaskExecutor:
    """An executor (``map`` over batches, in order) whose batches are Prefect task runs: each
    batch is one run of ``task`` (called with the inner executor, the batch and its extra
    arguments), submitted to the task runner; the inner executor is made by ``make_executor``
    for the runner (a process pool under the thread runner, in place in the runner's workers
    otherwise). Entering it starts both; the flow run owns them until it leaves."""

    def __init__(self, task: Any, runner: Any, inner: Executor, names: Iterable[str]) -> None:
        self.task, self.runner, self.inner, self.names = task, runner, inner, tuple(names)

    def map(self, batches: Iterable[Any], *args: Iterable[Any]) -> Iterator[Any]:
        futures = [
            self.runner.submit(self.task, {"executor": self.inner, **dict(zip(self.names, items))})
            for items in zip(batches, *args)
        ]
        for future in futures:  # in batch order: deterministic records
            yield future.result()

    def __enter__(self) -> TaskExecutor:
        self.inner.__enter__()
        try:
            self.runner.__enter__()
        except BaseException:
            self.inner.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.runner.__exit__(*exc)
        finally:
            self.inner.__exit__(*exc)


def task_executor_factory(
    task: Any, kind: str, workers: int, address: str | None = None, names: Iterable[str] = ("batch", "previous")
) -> Callable[[Stage, int], TaskExecutor]:
    """What ``run_ingest`` takes as its executor factory in a flow run: (stage, batches) -> a
    :class:`TaskExecutor` on the ``kind`` runner with ``workers`` workers (0: one per core)."""
    if kind not in RUNNERS:
        raise ValueError(f"task_runner must be one of {RUNNERS}, not {kind!r}")

    def make(stage: Stage, batches: int) -> TaskExecutor:
        inner = make_executor(stage, workers, batches, in_runner_workers=kind != "thread", from_threads=True)
        return TaskExecutor(task, make_task_runner(kind, workers=workers, address=address), inner, names)

    return make


def make_task_runner(kind: str, workers: int = 2, address: str | None = None):
    from offclip.pipeline.executor import resolve_workers

    workers = resolve_workers(workers)
    if kind == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        # twice the workers: a thread task mostly waits (on the ingest process pool, on the API),
        # and a spare one keeps the pool's queue full while another does its bookkeeping
        return ThreadPoolTaskRunner(max_workers=2 * workers)
    if kind == "process":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise RuntimeError("task_runner='dask' needs prefect-dask: pip install prefect-dask") from exc
        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
        )
    raise ValueError(f"task_runner must be one of {RUNNERS}, not {kind!r}")
