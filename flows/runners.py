"""Task runners selected by a flow parameter: Prefect's own thread/process pools locally,
prefect-dask's DaskTaskRunner (a local cluster, or an existing one by address) to scale out.

For clusters, Ray works the same way through ``prefect-ray``'s ``RayTaskRunner`` (add a branch
here once the package is installed), and a Kubernetes work pool runs the whole flow in pods —
see the README's "Scaling out" section.
"""

from __future__ import annotations

RUNNERS = ("thread", "process", "dask")


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
