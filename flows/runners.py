"""Task runners selected by a flow parameter: Prefect's own thread/process pools locally,
prefect-dask's DaskTaskRunner (a local cluster, or an existing one by address) to scale out;
and the executor (``pipeline/executor.py``) each one's ingest tasks hand their batches to.

A task runner runs *tasks* (Prefect's bookkeeping: states, retries, progress); the executor runs
the *stage* (where the decoding happens, set up once per worker). Per runner:

* ``thread``  -- tasks are threads of the flow's process, sharing one GIL: the executor is a
  :class:`ProcessExecutor` of ``workers`` processes (forked from a fork server), each batch cut
  into a chunk per worker; the runner has twice as many threads, which mostly wait on it.
* ``process`` / ``dask`` -- the runner's own worker processes are the parallelism: the executor is
  an :class:`InlineExecutor`, pickled into each task and set up once per runner worker process.

``workers`` = 1, or a single batch, is an InlineExecutor under every runner.

For clusters, Ray works the same way through ``prefect-ray``'s ``RayTaskRunner`` (add a branch
here once the package is installed), and a Kubernetes work pool runs the whole flow in pods —
see docs/orchestration.md, "Scaling out".
"""

from __future__ import annotations

from offclip.pipeline.executor import Executor, InlineExecutor, ProcessExecutor, Stage

RUNNERS = ("thread", "process", "dask")


def ingest_executor(kind: str, stage: Stage, workers: int, batches: int) -> Executor:
    """The executor a flow run's ingest tasks under the ``kind`` runner hand their batches to
    (the flow owns it: make it before submitting, close it after the last result)."""
    if kind not in RUNNERS:
        raise ValueError(f"task_runner must be one of {RUNNERS}, not {kind!r}")
    if kind == "thread" and workers > 1 and batches > 1:
        from offclip.pipeline.ingest import worker_context

        return ProcessExecutor(stage, workers, mp_context=worker_context())
    return InlineExecutor(stage)


def make_task_runner(kind: str, workers: int = 2, address: str | None = None):
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
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    raise ValueError(f"task_runner must be one of {RUNNERS}, not {kind!r}")
